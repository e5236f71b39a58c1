"""The classifier networks and how they are compiled.

Every model takes RGB images scaled to [0, 1] (see `happysad.images`) and ends in one sigmoid unit for two
classes (the probability of the second class) or a softmax over the classes for more.
"""
import keras
from keras import layers


def is_binary(num_classes: int) -> bool:
    return num_classes == 2


def head(num_classes: int, name: str = "prediction") -> layers.Layer:
    # float32 output even under mixed precision, so probabilities and losses stay numerically sound.
    if is_binary(num_classes):
        return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)


def build_cnn(num_classes: int, image_size: int) -> keras.Model:
    """The design card's network: three Conv2D blocks (16, 32, 16 filters), Dense 256, one output layer."""
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3), name="image"),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            head(num_classes),
        ],
        name="cnn",
    )


def compile_model(model: keras.Model, num_classes: int, learning_rate: float = 1e-3) -> keras.Model:
    if is_binary(num_classes):
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"),
                   keras.metrics.Precision(name="precision"),
                   keras.metrics.Recall(name="recall"),
                   keras.metrics.AUC(name="auc")]
    else:
        loss = "sparse_categorical_crossentropy"
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    return model
