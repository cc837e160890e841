"""The model benchmark suite: backends, LoadGen scenarios, trackers, reporters."""
