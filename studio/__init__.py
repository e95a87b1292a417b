"""DPO Studio: DPO training with live reward margins, and side-by-side chat with the SFT baseline."""
