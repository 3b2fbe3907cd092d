"""Search methods behind one interface: FDS with any backend, online greedy, random search, TPE, cosine,
schedule-free SGD, PBT, hand-picked.

Each method is one module here and one line in :data:`hpo.app.registry.SEARCH_METHODS`; ``base``
(the interface), ``inner_runs`` (the inner problem of an outer step or trial), ``space`` (search
ranges) and ``retrain`` (training a fresh model with a schedule) are what they share.
"""
