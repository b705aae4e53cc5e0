"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class KdzooError(Exception):
    """A problem with the user's input (config, model name, dataset, checkpoint, ...)."""


class ConfigError(KdzooError):
    """The recipe or an override is invalid."""


class CheckpointError(KdzooError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class DatasetError(KdzooError):
    """A dataset is unknown or its files are missing."""


class IncompatiblePairError(KdzooError):
    """A method cannot handle this student/teacher pair."""
