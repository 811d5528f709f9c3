"""Moved: folders (placement, recognition, locks) are :mod:`duolib.folders`, verified files
:mod:`duolib.manifests`.  Importing this module raises an ImportError that says so."""

raise ImportError("duolib.runfolder has moved: folders, locks and recognition are duolib.folders, manifests and "
                  "checked cache files duolib.manifests (see the CHANGELOG)")
