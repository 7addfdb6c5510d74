"""spintrail: the audit trail for Spinnaker.

Data flows one way through modules named after each step:
receive -> decode -> normalize -> redact -> store -> query / report / forward.
"""

__version__ = "0.1.0"
