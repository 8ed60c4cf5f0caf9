"""Everything that runs many trials, above the core and calling only `run_trial`:

- `tune`: the Ray Tune + Optuna sweep driver; `trainable`: what runs inside one Tune trial;
  `search_space`: the YAML search spaces;
- `campaign` + `grid`: the paper's experiments as YAML grids of cells; `compare`: the `table2`
  grid run serially, without Ray;
- `execution`: what the Ray drivers share (resources per trial, Ray's start, artifacts built
  first, the Parquet sink, the progress line);
- `store`: Parquet rows; `results`: queries, Pareto fronts and plots; `report` + `tables` +
  `transfer`: Markdown reports of campaigns.

The short commands `python -m nba_scale.tune` (and `.campaign`, `.compare`, `.results`,
`.report`) run these modules' `main`.
"""
