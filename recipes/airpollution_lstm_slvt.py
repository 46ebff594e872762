"""Multivariate time-series forecasting (the air-pollution series) with a one-layer LSTM (hidden 32; the
paper's 12,961 parameters at 67 inputs) through one 512-dimensional latent (SLVT).

    mapscale train recipes/airpollution_lstm_slvt.py data.path=/data/pollution.csv target.args='{"inputs": 8}'

``data.path`` is a CSV with one row per time step; every numeric column (``pollution`` included) is an input
feature and ``pollution`` one step after each 24-row window is the target. Set ``target.args.inputs`` to the
number of numeric columns (the paper's 67 suggests one-hot encoded categorical columns). The split is
chronological (last 20% of rows held out). The paper reports MSE 0.00080 at SLVT 512 (0.0035 full training),
on scaled data. Not yet measured here.
"""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class AirPollutionLstmSlvt(Recipe):
    task = "regression"
    target = TargetSection(name="paper_lstm", args={"inputs": 67})
    mapping = MappingMethod(grouping="slvt", budget=512)
    data = DataSection(name="timeseries", path=None, target_column="pollution", window=24, horizon=1, standardise_target=True)
    optim = OptimSection(epochs=30, batch_size=64)
