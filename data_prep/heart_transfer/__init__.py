"""Heart sub-part labels carried from contrast-enhanced to native CT scans of the same exam (mission step 3)."""

from data_prep.heart_transfer.transfer import TransferError, transfer_labels

__all__ = ["TransferError", "transfer_labels"]
