import pytest

from nba_scale.config import ConfigError
from nba_scale.sweep.store import hypervolume, pareto_mask
from nba_scale.sweep.search_space import decode, load_search_space


def test_shipped_nba_space_holds_the_paper_defaults():
    space = load_search_space("search_spaces/nba.yaml")
    point = space.default_point()
    assert point["nba.lambda1"] == 2.0 and point["nba.lambda2"] == 2.0 and point["nba.lambda3"] == 0.1
    assert point["nba.T"] == 5.0 and point["nba.alpha"] == 1.0 and point["nba.beta"] == 0.5
    assert abs(point["nba.pgd_eps"] - 8 / 255) < 1e-6
    dists = space.optuna_space()
    assert dists["nba.lambda1"].log and dists["nba.lambda1"].low < 2.0 < dists["nba.lambda1"].high


@pytest.mark.parametrize("text, fragment", [
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 1, high: 0.5, default: 0.7}\n", "nba.beta: low=1 must be below high=0.5"),
    ("defense: nba\nparams:\n  nba.beta: {type: flaot, low: 0.1, high: 1, default: 0.5}\n", "nba.beta: type 'flaot' is not one of"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0, high: 1, log: true, default: 0.5}\n", "log scale needs low > 0"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0.1, high: 1, default: 3}\n", "default 3 lies outside"),
    ("defense: nba\nparams:\n  nba.betta: {type: float, low: 0.1, high: 1, default: 0.5}\n", "unknown config key 'nba.betta'"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0.1, hihg: 1}\n", "unknown field 'hihg'"),
    ("defense: nba\nparams: [1, 2]\n", "'params' and 'fixed' must be mappings"),
    ("defense: nba\nsearch: {}\n", "unknown top-level key 'search'"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0.1\n", "not valid YAML"),
    ("defense: nba\nparams:\n  nba.terms: {type: categorical, choices: [[rnb], [pnb]], default: [lnb]}\n", "is not among choices"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0.1, high: 1, default: half}\n", "default 'half' must be a number"),
    ("defense: nba\nparams:\n  nba.beta: {type: float, low: 0.1, high: .inf, default: 0.5}\n", "finite numeric 'high'"),
    # valid at the default, invalid only where the searcher may go: caught before Ray starts
    ("defense: nba\nparams:\n  nba.pgd_steps: {type: float, low: 1, high: 10, default: 5}\n",
     "nba.pgd_steps: value 4.33 of its range: nba.pgd_steps=4.33 should be an integer"),
    ("defense: nba\nparams:\n  nba.losses: {type: categorical, choices: [both, all]}\n",
     "nba.losses: value 'all' of its range"),
    ("defense: nba\nparams:\n  nba.T: {type: float, low: 0, high: 5, default: 2}\n", "nba.T=0.0 must be > 0"),
])
def test_malformed_space_is_one_line_naming_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_search_space(path)
    assert fragment in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_categorical_lists_survive_the_searcher_encoding(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("defense: nba\nparams:\n  nba.terms: {type: categorical, choices: [[rnb, lnb, pnb], [rnb, pnb]]}\n")
    space = load_search_space(path)
    encoded = space.default_point()["nba.terms"]
    assert isinstance(encoded, str) and decode(encoded) == ["rnb", "lnb", "pnb"]


def test_pareto_front_on_hand_made_points():
    asr = [0.10, 0.05, 0.20, 0.05, 0.50, float("nan")]
    ba = [0.90, 0.80, 0.95, 0.70, 0.60, 0.99]
    # (0.05, 0.70) is dominated by (0.05, 0.80); (0.5, 0.6) by everything; NaN is never on the front.
    assert pareto_mask(asr, ba) == [True, True, True, False, False, False]
    assert pareto_mask([0.1, 0.1], [0.9, 0.9]) == [True, True]  # ties dominate neither


def test_hypervolume_is_the_area_the_points_dominate_from_the_worst_corner():
    assert hypervolume([0.0], [1.0]) == 1.0 and hypervolume([], []) == 0.0
    # (0.1, 0.5) and (0.2, 0.8): 0.1 x 0.5 + 0.8 x 0.8; a dominated point and a NaN add nothing.
    assert hypervolume([0.1, 0.2], [0.5, 0.8]) == pytest.approx(0.69)
    assert hypervolume([0.2, 0.1, 0.3, float("nan")], [0.8, 0.5, 0.7, 0.9]) == pytest.approx(0.69)


def test_a_resumed_study_tells_optuna_what_each_row_scored():
    from nba_scale.sweep.resume import objectives

    assert objectives({"status": "ok", "asr": 0.0, "ba": 0.8}) == [0.0, 0.8]  # ASR 0 is the best, not missing
    assert objectives({"status": "stopped", "asr": float("nan"), "ba": float("nan"),
                       "asr_at_stop": 0.3, "ba_at_stop": 0.6}) == [0.3, 0.6]
    assert objectives({"status": "failed", "asr": float("nan"), "ba": float("nan")}) == [1.0, 0.0]



def test_tpe_models_results_after_a_quarter_of_a_small_budget():
    """Optuna's default of 10 random trials made the 8-trial quick sweep a random search: an 8-trial
    study now draws 2 at random, then TPE proposes; a 100-trial one still starts with 10."""
    import optuna

    from nba_scale.sweep.study import make_searcher, tpe_startup_trials

    assert [tpe_startup_trials(b) for b in (1, 8, 16, 32, 64, 1000)] == [2, 2, 4, 8, 10, 10]
    space = load_search_space("search_spaces/nba.yaml")
    dists = space.optuna_space()

    def random_draws_after_two(budget):
        sampler = make_searcher(space, "tpe", 0, "s", optuna.storages.InMemoryStorage(), [], budget=budget,
                                concurrent=2)._sampler  # the sampler OptunaSearch gives its study
        study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
        for i in range(2):
            study.tell(study.ask(dists), (i / 2, 1 - i / 4))
        draws, real = [], sampler._random_sampler.sample_independent
        sampler._random_sampler.sample_independent = lambda *a, **k: draws.append(1) or real(*a, **k)
        study.ask(dists)
        return len(draws)

    assert random_draws_after_two(8) == 0
    assert random_draws_after_two(100) == len(dists)


def test_a_continued_study_holds_each_row_once_and_no_trial_a_dead_driver_left_open(tmp_path):
    """A study in a journal (the default storage) outlives its driver: continuing it tells only the
    rows it lacks, closes what the dead driver asked for and never told, and keeps failures
    infeasible, so `best_trials` is the front of the trials that ran."""
    import optuna

    from nba_scale.sweep.store import column_name
    from nba_scale.sweep.study import continue_study, open_storage

    space = load_search_space("search_spaces/nba.yaml")
    point = space.default_point()
    row = {column_name(k): decode(v) for k, v in point.items()}
    rows = [{**row, "trial_id": "a", "status": "ok", "asr": 0.1, "ba": 0.8},
            {**row, "trial_id": "b", "status": "failed", "asr": float("nan"), "ba": float("nan"), "error": "NaN loss"},
            {**row, "trial_id": "c", "status": "ok", "asr": 0.05, "ba": 0.7}]
    storage = open_storage("journal", tmp_path)
    assert (tmp_path / "_optuna.journal").is_file()
    assert continue_study(space, rows[:1], "s/x", storage) == (1, 1, 0)
    study = optuna.load_study(study_name="s/x", storage=storage)
    study.ask(space.optuna_space())  # the dead driver's running trial ...
    study.enqueue_trial(point)  # ... and a point it had queued
    again = open_storage("journal", tmp_path)  # a new driver, the same file
    assert continue_study(space, rows, "s/x", again) == (3, 2, 2)
    trials = optuna.load_study(study_name="s/x", storage=again).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3 + ["FAIL"] * 2
    done = {t.user_attrs["trial_id"]: t for t in trials if t.state.name == "COMPLETE"}
    assert sorted(done) == ["a", "b", "c"]
    assert done["b"].constraints == {"trial_failed": 1.0} and done["b"].values == [1.0, 0.0]
    front = optuna.load_study(study_name="s/x", storage=again).best_trials
    assert sorted(t.user_attrs["trial_id"] for t in front) == ["a", "c"]
    assert continue_study(space, rows, "s/x", open_storage("journal", tmp_path)) == (3, 0, 0)
