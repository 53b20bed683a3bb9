"""Studies: grids of training runs (``qmix sweep``), learning curves (``qmix plot``) and result
tables (``qmix report``). Ray and matplotlib are optional extras: ``pip install 'qmix[sweep]'``."""
