"""The numerical core: schedules (sharing over segments and parameter groups), the inner problem,
the plain inner step, the hypergradient backend interface, callbacks, and the driver that plays a
schedule on a ``torch.optim`` optimizer.  Pure functions over dicts of tensors."""
