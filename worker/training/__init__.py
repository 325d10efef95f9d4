"""Training nn4.small2 (`facewatch train`): triplet loss with online semi-hard mining, distillation from
dlib's ResNet, P x K batches from a folder-per-identity tree or from the worker's own tracks on a video.

Detection and alignment are not trained: every face is aligned once (worker.training.data) and its
chips cached; augmentation works on the chips (worker.training.augment).
"""
