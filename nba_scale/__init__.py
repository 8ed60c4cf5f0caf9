"""nba_scale: hyper-parameter search and large-scale evaluation of backdoor removal (NBA and baselines)."""
__version__ = "0.1.0"


def run_trial(config, report=None):
    """See `nba_scale.trial.run_trial` (imported lazily: `import nba_scale` stays cheap)."""
    from .trial import run_trial as _run

    return _run(config, report)


__all__ = ["run_trial", "__version__"]
