"""Replay: reissue recorded sessions against a staging target and record what it answered.

`run_replay(ReplayConfig(...))` is the entry point; `plan_replay` is its dry run.
"""

from shadowtape.replay.config import ReplayConfig
from shadowtape.replay.runner import Progress, ReplayPlan, plan_replay, run_replay
from shadowtape.replay.stats import ReplaySummary

__all__ = ["Progress", "ReplayConfig", "ReplayPlan", "ReplaySummary", "plan_replay", "run_replay"]
