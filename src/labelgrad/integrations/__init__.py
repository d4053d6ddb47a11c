"""Fit labelgrad into training stacks: PyTorch Lightning and the Hugging Face Trainer.

The submodules import their framework lazily: ``import labelgrad`` never imports Lightning or
transformers; ``import labelgrad.integrations.lightning`` needs the ``lightning`` extra
(``pip install 'labelgrad[lightning]'``) and ``import labelgrad.integrations.transformers`` the
``transformers`` extra (``pip install 'labelgrad[transformers]'``).
"""

__all__: list[str] = []
