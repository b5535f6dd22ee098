"""visplay: a vision-language model that improves itself from unlabeled images.

Pipeline (one folder per arrow): worlds/data -> roles -> sampling -> rewards -> labeling -> evolve -> eval.
"""

__version__ = "0.1.0"
