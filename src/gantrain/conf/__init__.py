"""gantrain's configs (src/gantrain/conf/ in the repository). Importing this package, as Hydra does to read them, also
stores gantrain's launcher config (hydra/launcher=stacked, train.yaml's default) in Hydra's ConfigStore."""
import hydra_plugins.gantrain_launcher.stacked_launcher  # noqa: F401  (its ConfigStore entry)
