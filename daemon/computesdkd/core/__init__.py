"""The core: the sandbox registry, lifecycle, placement, processes, files, the sweeper
and the provider guard. It depends on the domain, the store and the provider
contract only; features plug in through its hooks."""
