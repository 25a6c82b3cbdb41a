"""Reports in (issue 12 §1): radiology reports received as HL7 v2 ORU^R01 over MLLP, or through the API.

:mod:`.hl7_message` reads one message (pure: bytes in, a typed report or a refusal out, and the ACK);
:mod:`.mllp` is the listener ``serve --hl7-port`` runs; :mod:`.view` holds a study's current report
against its decision with the documentation verdict of :mod:`dicomcheck.reports`.
"""
