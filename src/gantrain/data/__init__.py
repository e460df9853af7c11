"""Data as gantrain trains on it: a folder of images prepared once (prepared.py, torch-free), and the
tensor whose batches the loop takes, in memory or streamed (tensors.py). The readers of each format are the
data registry's entries (components/data.py)."""
