"""The latentlab Python client: the HTTP API as methods that return DataFrames, images and NumPy arrays.

Usage::

    from latentlab import Client
    lab = Client()                                  # LATENTLAB_URL and LATENTLAB_TOKEN (or a token file)
    job = lab.generate_dataset(model="tiny", name="run1", num_samples=500).wait()
    history = lab.history(mode="umap_inverse")      # a pandas DataFrame

It speaks only HTTP (``requests``); it imports nothing else of this repository.
"""

from latentlab.client import ApiError, Client, JobFailed
from latentlab.jobs import Job

__all__ = ["ApiError", "Client", "Job", "JobFailed"]
