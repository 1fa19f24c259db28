"""The folder named by nnUNet_extTrainer: nnU-Net imports its modules to find the engine's trainers."""
