"""Datasets: real downloaders (:mod:`.real`, :mod:`.download`) and offline generators
(:mod:`.offline`) behind one interface (:mod:`.prepared`); dataset kinds and their splits
(:mod:`.kinds`, no torch).  No torch here: the Snakefile's input functions import :mod:`.kinds`."""
