"""Data sets as gantrain trains on them: a folder of images prepared once (prepared.py)."""
