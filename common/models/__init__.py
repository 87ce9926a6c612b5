"""The SQL schema, one module per aggregate. Importing this package registers every table on ``Base``."""

from common.models.base import Base, utcnow
from common.models.datasets import Dataset, Sample
from common.models.embeddings import Embedding, EmbeddingPoint
from common.models.generations import Generation, Lineage, Sweep
from common.models.jobs import Job
from common.models.registry import GeneratorModel
from common.models.users import ApiToken, User

__all__ = [
    "ApiToken",
    "Base",
    "Dataset",
    "Embedding",
    "EmbeddingPoint",
    "Generation",
    "GeneratorModel",
    "Job",
    "Lineage",
    "Sample",
    "Sweep",
    "User",
    "utcnow",
]
