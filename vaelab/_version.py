"""vaelab's version, and the git commit of this source tree where it comes from ``git archive``
(``.gitattributes``: ``export-subst`` fills ``COMMIT`` in); in a checkout the placeholder
stays, and :func:`vaelab.runs.provenance.code_identity` asks git instead."""

__version__ = "0.1.0"
COMMIT = "$Format:%H$"
