"""What several back ends share, so that none imports another.

env (a command's environment), templates (the predefined names local and docker
offer), rootfs_recipe (the Debian base both build), http (vendor HTTP calls and
their error mapping), retry (the one retry policy), run (a foreground command
streamed from a vendor), files and file_api (vendors' own file APIs), lifecycle
(create's guards), execfs (files and usage through commands, for back ends
without a file or metrics API).
"""
