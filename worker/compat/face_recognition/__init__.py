"""face_recognition's API (ageitgey's package, 1.3.0) on facewatch's models: change only the import.

``from worker.compat import face_recognition`` gives the same functions, arguments, defaults and
results: HOG boxes and landmarks from dlib itself, CNN boxes and 128-d encodings from facewatch's
torch ports of dlib's networks (the same boxes, encodings within 1e-5), batched and GPU-capable.
docs/face_recognition.md says what differs.
"""

from worker.compat.face_recognition.api import (
    batch_face_encodings,
    batch_face_locations,
    compare_faces,
    face_distance,
    face_encodings,
    face_landmarks,
    face_locations,
    load_image_file,
)

# The face_recognition release whose API this module reproduces.
__version__ = "1.3.0"

__all__ = [
    "batch_face_encodings",
    "batch_face_locations",
    "compare_faces",
    "face_distance",
    "face_encodings",
    "face_landmarks",
    "face_locations",
    "load_image_file",
]
