"""The model families (cnn, mlp, resnet) as functions of their config, their training-time
augmentation, and the optimizers and learning-rate schedules that train them."""
