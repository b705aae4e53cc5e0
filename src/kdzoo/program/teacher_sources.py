"""Where a frozen teacher's outputs come from when the recipe asks for `teacher.cache`: computed once and read
by dataset index (`true`, teacher_cache.py), or replayed with the augmentation draws of a recording run
(`replay`, teacher_replay.py). Without it the teacher runs live (a FrozenTeacher)."""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from kdzoo.core.dist import barrier
from kdzoo.data.info import DatasetInfo
from kdzoo.models import Needs
from kdzoo.program.program import BuildContext
from kdzoo.program.teacher_cache import (
    CachedTeacher,
    cache_key,
    refuse_uncacheable,
    teacher_cache,
)
from kdzoo.program.teacher_replay import replay_program_parts


def teacher_source(ctx: BuildContext, streams: dict, methods: dict, teacher, images, needs: Needs,
                   info: DatasetInfo) -> tuple[Any, Optional[Callable[[int], dict[str, float]]]]:
    """(what a step reads instead of the live teacher, an epoch hook that must run first or None)."""
    cfg = ctx.cfg
    if cfg.teacher.cache == "replay":
        return replay_program_parts(cfg, streams, methods, teacher, info, ctx.device, ctx.out, ctx.dist.is_main,
                                    ctx.log)
    refuse_uncacheable(methods)
    d = cfg.dataset
    pipeline = json.dumps({"augment": d.augment, "image_size": d.image_size, "views": d.views})
    key = cache_key(cfg.teacher.checkpoint, images, cfg.seed, needs, info.name, pipeline)
    outputs = teacher_cache(teacher, images, key, cfg.teacher.cache_dir or ctx.out, cfg.seed, d.eval_batch_size,
                            ctx.device, ctx.log, ctx.dist.is_main, lambda: barrier(ctx.dist),
                            progress=cfg.engine.progress, shared=cfg.teacher.cache_dir is not None)
    return CachedTeacher(outputs, ctx.device), None
