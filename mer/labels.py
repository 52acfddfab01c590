"""The 3-class label set of every protocol (MEGC2019 composite, CAS(ME)^3 3-class), in one place.

from mer.labels import LABEL_NAMES, NUM_CLASSES     # ('negative', 'positive', 'surprise'), 3
"""

from __future__ import annotations

NEGATIVE, POSITIVE, SURPRISE = 0, 1, 2
#: class index -> name; predictions files name their probability columns p_<name>
LABEL_NAMES = ("negative", "positive", "surprise")
NUM_CLASSES = len(LABEL_NAMES)
