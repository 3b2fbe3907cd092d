"""Search methods behind one interface: FDS with any backend, online greedy, random search, TPE, cosine,
schedule-free SGD, PBT, hand-picked.

Each method is one file here and one line in :data:`hpo.registry.SEARCH_METHODS`.
"""
