"""Drop-in replacements for other face libraries' APIs, run on facewatch's models.

``from worker.compat import face_recognition`` stands in for ageitgey's face_recognition package.
"""
