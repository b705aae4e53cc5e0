"""The program interface between regimes and the engine (see `program.py`)."""
from kdzoo.core.batch import Binding
from kdzoo.data.stream import DataStream, to_batch
from kdzoo.distillers.context import StepContext
from kdzoo.program.program import (
           Artifact,
           BuildContext,
           ModelSlot,
           Phase,
           Program,
           Runtime,
)

__all__ = ["Artifact", "Binding", "BuildContext", "DataStream", "ModelSlot", "Phase", "Program", "Runtime",
           "StepContext", "to_batch"]
