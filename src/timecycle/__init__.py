"""timecycle: learning visual correspondence from the cycle-consistency of time.

Wang, Jabri, Efros, "Learning Correspondence from the Cycle-Consistency of Time", CVPR 2019.
The package trains a dense feature encoder from unlabeled video and propagates first-frame
labels (masks, keypoints, parts) through video with the encoder's affinities alone.
"""

__version__ = "0.1.0"
