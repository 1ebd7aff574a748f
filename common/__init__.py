"""What every package may import: the user-error types and the registry of swappable parts.

Importing it also selects DGL's PyTorch backend, the one place the project does so: the packages that
import dgl (`sampler`, `models`, `pipeline.stages`) import `common` first, so dgl finds `DGLBACKEND` set
and neither asks for a backend nor writes one to the user's ~/.dgl. A backend the user set is kept.
"""
import os

os.environ.setdefault("DGLBACKEND", "pytorch")
