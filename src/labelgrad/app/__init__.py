"""The labelgrad application: the ``labelgrad`` command (demo, bench, train), its datasets,
recipes, metrics, figures and HTML report.

The library (``labelgrad`` and every other subpackage) never imports this package, so a bare
``pip install labelgrad`` imports without tqdm, matplotlib, scikit-learn or river. The
application needs the extras: ``pip install 'labelgrad[cli,data]'``.
"""
