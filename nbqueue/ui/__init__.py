"""What people see and type: widgets, magics, the tqdm drop-in."""
