"""Root conftest: the xenhil plugin itself is loaded through its pytest11
entry point (``pip install -e .``); nothing here re-registers it.

Keep the virtual lab's runtime state and caches out of collection.
"""
collect_ignore_glob = ["lab/virtual/state/*", "artifacts/*", "node_modules/*", ".cache/*"]
