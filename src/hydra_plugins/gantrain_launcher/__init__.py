"""gantrain's Hydra launcher (hydra/launcher=stacked): see stacked_launcher.py."""
