"""The small pieces: model shape, schedules, evaluation arithmetic, record helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from digitcnn.core.config_groups import AdamConfig, CNNConfig, SGDConfig
from digitcnn.evaluation.metrics import evaluate
from digitcnn.tracking import flatten, redact


@pytest.mark.parametrize(("shape", "classes"), [((28, 28, 1), 10), ((8, 8, 1), 10)])
def test_model_takes_shape_and_classes_from_the_dataset(shape, classes):
    from digitcnn.models.families import build_cnn

    model = build_cnn(CNNConfig(), shape, classes)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, classes)


def test_reference_architecture_layers_in_order():
    from digitcnn.models.families import build_cnn

    model = build_cnn(CNNConfig(filters=[32, 64]), (28, 28, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    block = ["Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Dropout"]
    assert kinds == [*block, *block, "Flatten", "Dense", "Dense"]


def test_blocks_stack_several_convolutions_before_pooling():
    from digitcnn.models.families import build_cnn

    model = build_cnn(CNNConfig(filters=[16, 32], convs_per_block=2), (28, 28, 1), 10)
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    assert model.get_layer("conv2_1").kernel.shape == (5, 5, 16, 32)
    assert model.get_layer("flatten").output.shape[1:] == (7 * 7 * 32,)


def test_pool_first_pools_each_blocks_last_convolution_before_its_norm():
    """`model.pool_first`: the last conv of a block is pooled, then normalised and rectified
    on a quarter of the values; the model's output is the same shape, an 8x8 input that runs
    out of pixels is not pooled at all."""
    from digitcnn.models.families import build_cnn

    cfg = CNNConfig(filters=[12, 32], padding="valid", convs_per_block=2, pool_first=True)
    model = build_cnn(cfg, (28, 28, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    first = ["Conv2D", "BatchNormalization", "ReLU"]
    last = ["Conv2D", "MaxPooling2D", "BatchNormalization", "ReLU", "Dropout"]
    assert kinds == [*first, *last, *first, *last, "Flatten", "Dense", "Dense"]
    assert model.get_layer("bn1_2").output.shape[1:] == (10, 10, 12)
    small = build_cnn(CNNConfig(filters=[8, 8, 8, 8], pool_first=True), (8, 8, 1), 10)
    assert sum(type(layer).__name__ == "MaxPooling2D" for layer in small.layers) == 3


def _centre_of_mass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[: images.shape[1], : images.shape[2]]
    mass = images[..., 0].sum(axis=(1, 2))
    return (images[..., 0] * cols).sum((1, 2)) / mass, (images[..., 0] * rows).sum((1, 2)) / mass


def test_augmentation_warps_in_training_only_within_its_limits():
    from digitcnn.models.augment import RandomAffine

    images = np.zeros((64, 28, 28, 1), np.float32)
    images[:, 10:18, 12:16] = 1.0  # a bar in the middle
    assert np.array_equal(RandomAffine(10, 0.1, 0.1)(images, training=False), images)
    assert np.allclose(RandomAffine(0, 0, 0, seed=1)(images, training=True), images, atol=1e-5)

    shifted = np.asarray(RandomAffine(shift=0.1, seed=1)(images, training=True))
    dx = _centre_of_mass(shifted)[0] - _centre_of_mass(images)[0]
    assert np.abs(dx).max() <= 0.1 * 28 + 1e-3 and dx.std() > 0.5  # each image its own shift

    rotated = np.asarray(RandomAffine(rotation=10, seed=1)(images, training=True))
    assert rotated.sum() == pytest.approx(images.sum(), rel=1e-3)  # turned, not scaled
    assert not np.allclose(rotated, images)

    zoomed = np.asarray(RandomAffine(zoom=0.1, seed=1)(images, training=True))
    area = zoomed.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    # (1 +- 0.1) squared, give or take the edge pixels bilinear sampling adds
    assert 0.78 <= area.min() < 0.95 and 1.05 < area.max() <= 1.25


def test_elastic_distortion_samples_once_where_the_affine_map_and_a_smooth_field_point():
    """The sampler the elastic warp uses is Keras's bilinear affine_transform on an affine map;
    the distortion moves pixels smoothly (neighbours move alike), by about a pixel and a half
    at Simard's strength, and keeps a digit's ink; inference is untouched."""
    from keras import ops

    from digitcnn.models.augment import RandomAffine, bilinear

    rng = np.random.default_rng(0)
    images = rng.random((16, 28, 28, 1), np.float32)
    angle, centre = rng.uniform(-0.2, 0.2, 16).astype(np.float32), 13.5
    cos, sin = np.cos(angle), np.sin(angle)
    a2, b2 = centre - cos * centre + sin * centre - 1.3, centre - sin * centre - cos * centre
    zeros = np.zeros_like(cos)
    keras_warp = ops.image.affine_transform(
        images, np.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], 1), fill_value=0
    )
    ys, xs = np.mgrid[:28, :28].astype(np.float32)
    source_x = cos[:, None, None] * xs - sin[:, None, None] * ys + a2[:, None, None]
    source_y = sin[:, None, None] * xs + cos[:, None, None] * ys + b2[:, None, None]
    assert np.allclose(bilinear(images, source_x, source_y), keras_warp, atol=1e-5)

    layer = RandomAffine(elastic=34, elastic_sigma=4, seed=1)
    field = np.asarray(layer._displacement(16, 28, 28))
    assert 0.8 < field.std() < 2.5  # pixels
    assert np.abs(np.diff(field, axis=2)).mean() < 0.25 * np.abs(field).mean()  # smooth
    bars = np.zeros((16, 28, 28, 1), np.float32)
    bars[:, 8:20, 12:16] = 1.0
    warped = np.asarray(layer(bars, training=True))
    assert not np.allclose(warped, bars)
    assert warped.sum() == pytest.approx(bars.sum(), rel=0.25)  # moved and stretched, not lost
    assert np.array_equal(layer(bars, training=False), bars)


def test_augmented_model_saves_and_loads(tmp_path):
    import keras

    from digitcnn.models.families import build_cnn

    cfg = CNNConfig(
        filters=[8], augment_rotation=10, augment_shift=0.1, augment_zoom=0.1, augment_elastic=34
    )
    model = build_cnn(cfg, (28, 28, 1), 10)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("augmentation").get_config()["rotation"] == 10
    assert loaded.get_layer("augmentation").get_config()["elastic"] == 34
    x = np.random.default_rng(0).random((2, 28, 28, 1), np.float32)
    assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_mixed_precision_computes_in_bfloat16_and_answers_in_float32():
    import keras

    from digitcnn.models.families import build_cnn
    from digitcnn.training.fit import set_precision

    try:
        set_precision("mixed_bfloat16")
        model = build_cnn(CNNConfig(filters=[8]), (28, 28, 1), 10)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("conv1").kernel.dtype == "float32"
    assert model(np.zeros((1, 28, 28, 1), np.float32)).dtype == "float32"


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    from digitcnn.models.optimizers import learning_rate

    schedule = learning_rate(
        AdamConfig(lr=0.01, schedule="cosine", warmup_epochs=1, final_lr_fraction=0.1),
        steps_per_epoch=10,
        epochs=5,
    )
    values = [float(schedule(step)) for step in (0, 9, 10, 30, 49, 1000)]
    assert values[0] == pytest.approx(0.001)
    assert values[1] == pytest.approx(0.01)
    assert values[2] == pytest.approx(0.01)
    assert 0.001 < values[3] < 0.01
    assert values[5] == pytest.approx(0.001)


def test_constant_rate_is_a_plain_float_as_the_reference():
    from digitcnn.models.optimizers import build_optimizer, learning_rate

    assert learning_rate(AdamConfig(lr=0.002), 10, 5) == 0.002
    assert type(build_optimizer(SGDConfig(), 10, 5)).__name__ == "SGD"


def test_evaluation_counts_and_loss():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    scores = evaluate(probabilities, labels)
    assert scores.accuracy == 0.75
    np.testing.assert_array_equal(scores.confusion, [[1, 0], [1, 2]])
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert scores.loss == pytest.approx(expected_loss)
    assert scores.report["accuracy"] == 0.75


def test_flatten_uses_dotted_keys_and_keeps_lists_whole():
    flat = flatten({"model": {"filters": [32, 64], "dropout": 0.25}, "seed": 1})
    assert flat == {"model.filters": "[32, 64]", "model.dropout": "0.25", "seed": "1"}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://alice:s3cret@mlflow.example:5000", "http://***@mlflow.example:5000"),
        ("postgresql://u:p@db/mlflow", "postgresql://***@db/mlflow"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://localhost:5000", "http://localhost:5000"),
    ],
)
def test_credentials_are_redacted(uri, expected):
    assert redact(uri) == expected


def test_a_ctrl_c_swallowed_mid_epoch_still_stops_training_at_its_end():
    import os
    import signal
    import time

    from digitcnn.training.fit import StopOnInterrupt

    stop = StopOnInterrupt()
    before = signal.getsignal(signal.SIGINT)
    with stop.watching():
        try:  # as in a finalizer, where Python prints the KeyboardInterrupt and drops it
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler interrupts this at once
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            stop.on_epoch_end(0)
    assert signal.getsignal(signal.SIGINT) is before


HELD_STOP = """
import os, signal, sys, time
from digitcnn.core import stops
from digitcnn.training.fit import StopOnInterrupt

stops.install()
done = []
try:
    with stops.held():  # as a Keras file being written: the stop waits for the block's end
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        done.append("block")
except stops.Stopped as stop:
    done.append(stop.name)
try:  # swallowed, as in a finalizer: training still stops at the epoch's end
    StopOnInterrupt().on_epoch_end(0)
except stops.Stopped as stop:
    done.append(stop.name)
print(" ".join(done))
"""


def test_a_stop_waits_for_a_held_block_and_a_swallowed_one_ends_the_epoch():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", HELD_STOP], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.split() == ["block", "SIGTERM", "SIGTERM"], proc.stderr[-2000:]


def test_torch_backend_refuses_several_batches_per_call_before_anything_runs(monkeypatch):
    """Keras's torch trainer takes one batch per call; TensorFlow is what runs this test, so
    the backend's name is the one thing faked. The error comes before torch is imported."""
    import keras

    from digitcnn.core.config_groups import TrainerConfig
    from digitcnn.core.errors import ConfigValueError
    from digitcnn.training.fit import configure_backend

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ConfigValueError, match=r"trainer\.steps_per_execution=16 .* torch"):
        configure_backend(TrainerConfig(steps_per_execution=16), seed=0)


def test_jax_backend_says_threads_are_not_applied(monkeypatch, caplog):
    import keras

    from digitcnn.core.config_groups import TrainerConfig
    from digitcnn.training.fit import configure_backend

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    configure_backend(TrainerConfig(), seed=0, threads=(2, 1))
    assert "not applied on the jax backend" in caplog.text


def test_recalibration_sets_the_statistics_evaluation_sees_and_touches_nothing_else():
    """Each BatchNorm's moving statistics become its input's mean and variance over the
    images, as evaluation computes that input (dropout off, earlier BatchNorms recalibrated);
    weights and dropout are as before."""
    import keras

    from digitcnn.models.families import build_cnn
    from digitcnn.training.batchnorm import recalibrate

    model = build_cnn(CNNConfig(filters=[4, 6], dropout=0.5), (8, 8, 1), 10)
    images = np.random.default_rng(0).random((700, 8, 8, 1)).astype(np.float32)
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert recalibrate(model, images) == 2

    for name in ("bn1", "bn2"):
        norm = model.get_layer(name)
        upstream = keras.Model(model.inputs, norm.input)  # inference mode: what evaluation sees
        features = np.asarray(upstream.predict(images, verbose=0)).reshape(-1, norm.input.shape[-1])
        np.testing.assert_allclose(norm.moving_mean.numpy(), features.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(
            norm.moving_variance.numpy(), features.var(axis=0), rtol=1e-3, atol=1e-6
        )
    for old, new in zip(before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())
    assert model.get_layer("dropout1").rate == 0.5


def test_short_runs_validate_with_recalibrated_statistics():
    """Two epochs on digits: Keras's moving averages (momentum 0.99) are still near their
    start and validation is near chance; recomputed statistics show what was learned."""
    import keras

    from digitcnn.core.config_groups import DigitsConfig, TrainerConfig
    from digitcnn.data import load_dataset
    from digitcnn.models.families import build_cnn
    from digitcnn.training.fit import train

    data = load_dataset(DigitsConfig(), seed=0)
    accuracy = {}
    for batches in (0, 32):
        trainer = TrainerConfig(epochs=2, bn_recalibration_batches=batches)
        keras.utils.set_random_seed(0)
        model = build_cnn(CNNConfig(), data.input_shape, data.num_classes)
        result = train(model, data, AdamConfig(schedule="cosine"), trainer, seed=0)
        accuracy[batches] = result.history["val_accuracy"][-1]
        assert len(result.history["bn_recalibration_seconds"]) == 2
    assert accuracy[32] >= 0.85 and accuracy[0] < 0.7, accuracy


def test_training_batches_take_a_new_order_every_epoch_and_the_same_orders_for_a_seed():
    """Keras 3.15's own pipeline for arrays gave every epoch the same order once a global
    seed was set; each epoch (a new pass over the batches) must be shuffled anew."""
    import keras

    from digitcnn.training.batching import training_batches

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data pipeline is TensorFlow's")
    keras.utils.set_random_seed(0)
    x = np.arange(200, dtype=np.float32)[:, None]

    def two_epochs(seed: int) -> list[np.ndarray]:
        args, steps = training_batches(x, x.copy(), 64, seed)
        assert steps == 4  # 3 full batches and a ragged one
        return [np.concatenate([np.asarray(b[0]).ravel() for b in args["x"]]) for _ in range(2)]

    first, second = two_epochs(seed=1)
    assert sorted(first) == list(range(200)) and sorted(second) == list(range(200))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(two_epochs(seed=1)[1], second)  # reproducible per seed
    assert not np.array_equal(two_epochs(seed=2)[0], first)


def test_the_last_validation_is_the_trained_models_answer():
    """With dataset.val_size=0 a run takes its last validation's probabilities as the test
    set's: they must be what the trained model answers for the test images."""
    from digitcnn.core.config_groups import DigitsConfig, TrainerConfig
    from digitcnn.data import load_dataset
    from digitcnn.models.families import build_cnn
    from digitcnn.training.batching import predict_probabilities
    from digitcnn.training.fit import train

    data = load_dataset(DigitsConfig(val_size=0), seed=0)
    model = build_cnn(CNNConfig(), data.input_shape, data.num_classes)
    result = train(model, data, AdamConfig(), TrainerConfig(epochs=2), seed=0)
    np.testing.assert_allclose(
        result.validation_probabilities, predict_probabilities(model, data.x_test), atol=1e-6
    )


@pytest.mark.parametrize(
    ("count", "largest", "size"),
    [(10000, 1024, 1000), (5000, 256, 250), (180, 256, 180), (997, 512, 512), (0, 64, 1)],
)
def test_even_batches_divide_the_images_when_a_size_close_enough_does(count, largest, size):
    from digitcnn.training.batching import even_batch

    assert even_batch(count, largest) == size


def test_secret_settings_are_masked_in_log_lines(caplog):
    """The Ray launcher logs its ray.init settings, whose runtime environment carries the
    tracking server's password to the workers: the value never reaches a log line."""
    import logging

    from digitcnn.core.runtime import hide_secrets_in_logs

    hide_secrets_in_logs("test.secrets")
    secrets = {"MLFLOW_TRACKING_PASSWORD": "s3cret pass", "API_TOKEN": "t0k"}
    settings = {"env_vars": {"MLFLOW_TRACKING_USERNAME": "alice", **secrets}}
    with caplog.at_level(logging.INFO, logger="test.secrets"):
        logging.getLogger("test.secrets").info("Initializing ray with config: %s", settings)
    (line,) = caplog.messages
    assert "s3cret" not in line and "t0k" not in line
    assert "'MLFLOW_TRACKING_PASSWORD': '***'" in line and "'alice'" in line


def test_a_channel_message_arriving_in_pieces_is_read_whole_once_complete():
    import pickle
    import socket
    import threading

    from digitcnn.tracking.channel import Channel, ChannelClosed

    ours, theirs = socket.socketpair()
    channel = Channel(ours)
    payload = pickle.dumps(("record", ("log_epoch", {"loss": 0.5}, 1), {}))
    frame = len(payload).to_bytes(8, "big") + payload
    for piece in (frame[:3], frame[3:20], frame[20:]):
        assert channel.receive(wait=False) is None  # what came so far is kept, not lost
        theirs.sendall(piece)
    assert channel.receive(wait=False) == ("record", ("log_epoch", {"loss": 0.5}, 1), {})
    big = np.arange(300_000)  # more than a socket's buffer: sent in many pieces, read whole
    sender = threading.Thread(target=Channel(theirs).send, args=(("ok", big, []),))
    sender.start()
    status, value, records = channel.receive()
    sender.join()
    assert status == "ok" and np.array_equal(value, big) and records == []
    theirs.close()
    with pytest.raises(ChannelClosed):
        channel.receive()


@pytest.mark.parametrize(
    ("names", "fields", "path", "user", "is_admin", "refused"),
    [
        ("name", {"name": "alice.digitcnn"}, "", "alice", False, None),
        ("name", {"name": "alice.digitcnn"}, "", "bob", False, "belongs to user 'alice'"),
        ("name", {"name": "alice.digitcnn"}, "", "admin", True, None),
        ("new_name", {"new_name": "alice.x"}, "", "bob", False, "belongs to user 'alice'"),
        ("name", {"name": "alice."}, "", "bob", False, "belongs to user 'alice'"),
        ("name", {"name": "digitcnn"}, "", "bob", False, None),
        # look-alike dots: refused outright, whoever asks
        ("name", {"name": "alice\u2024digitcnn"}, "", "bob", False, "looks like a dot"),
        ("name", {"name": "alice\uff0edigitcnn"}, "", "bob", False, "looks like a dot"),
        ("name", {"name": "alice\u00b7digitcnn"}, "", "alice", False, "looks like a dot"),
        ("username", {"username": "carol.x"}, "", "admin", True, "contains a dot"),
        ("username", {"username": "carol\uff0ex"}, "", "admin", True, "contains a dot"),
        # the server's tags: in any body, query or path, whatever the route
        (None, {"key": "digitcnn.owner"}, "", "admin", True, "team server alone"),
        (None, {"key": "mlflow.user"}, "", "bob", False, None),
        (None, {"tags": [{"key": "digitcnn.owner"}]}, "", "bob", False, "alone"),
        (None, {"a": {"b": [{"key": "digitcnn.registered_by"}]}}, "", "bob", False, "alone"),
        (None, {}, "/api/2.0/mlflow/logged-models/m-1/tags/digitcnn.owner", "bob", False, "alone"),
    ],
)
def test_the_team_rules_refuse_others_names_and_forged_records(
    names, fields, path, user, is_admin, refused
):
    from digitcnn.team.rules import refusal

    reason = refusal(names, fields, {}, path, user, is_admin)
    assert (reason is None) if refused is None else (refused in reason), reason
    query = refusal(None, {}, {"key": ["digitcnn.registered_by"]}, "", "bob", False)
    assert "alone" in query  # DELETE .../delete-tag?key=...


@pytest.mark.parametrize("env_user", [None, "erin"])
def test_the_tracking_user_is_the_one_mlflows_client_sends(tmp_path, monkeypatch, env_user):
    """From MLFLOW_TRACKING_USERNAME, else ~/.mlflow/credentials: as MLflow's client reads it."""
    from mlflow.utils.credentials import read_mlflow_creds

    from digitcnn.core.config import tracking_user

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    if env_user:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env_user)
    assert tracking_user() == read_mlflow_creds().username == env_user
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = dana\nmlflow_tracking_password = pw\n"
    )
    assert tracking_user() == read_mlflow_creds().username == (env_user or "dana")


def test_a_wrong_password_costs_one_slow_hash_whether_or_not_the_user_exists(monkeypatch):
    """By construction: an unknown user is checked against a hash of nothing, with the method
    the store's users have; a known user's password against the current hash, once (then
    remembered for that hash only: a changed password is checked again)."""
    import werkzeug.security
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from werkzeug.security import generate_password_hash

    from digitcnn.team.passwords import Passwords

    class Account:
        def __init__(self, name: str, password: str) -> None:
            self.username, self.is_admin = name, False
            self.password_hash = generate_password_hash(password, method="pbkdf2:sha256:1000")

    class Users:
        def __init__(self) -> None:
            self.accounts = {"alice": Account("alice", "right")}

        def get_user(self, name):
            if name not in self.accounts:
                raise MlflowException(f"{name} not found", RESOURCE_DOES_NOT_EXIST)
            return self.accounts[name]

        def list_users(self):
            return list(self.accounts.values())

    hashed = []
    real = werkzeug.security.check_password_hash

    def counted(stored: str, given: str) -> bool:
        hashed.append(stored.split("$")[0])
        return real(stored, given)

    monkeypatch.setattr(werkzeug.security, "check_password_hash", counted)
    users = Users()
    passwords = Passwords(users)
    assert passwords.check("nobody", "x") is None
    assert passwords.check("alice", "wrong") is None
    assert passwords.check("alice", "right").username == "alice"
    assert passwords.check("alice", "right").username == "alice"  # remembered
    assert hashed == ["pbkdf2:sha256:1000"] * 3  # the same method for all three
    users.accounts["alice"] = Account("alice", "new")
    assert passwords.check("alice", "right") is None  # the old one, at once
    assert passwords.check("alice", "new").username == "alice"


def test_a_weight_average_is_what_each_epoch_validates_and_the_run_keeps(tmp_path):
    """optimizer.ema_momentum (here with trainer.label_smoothing): the last validation (the
    test set's, with val_size=0) is the final model's answer, which is not the trained
    weights' (the same seed without an average trains the same weights). A checkpoint holds
    the average and the trained weights: a resumed fit trains on from the latter, as the
    uninterrupted one did."""
    import keras

    from digitcnn.core.config_groups import DigitsConfig, TrainerConfig
    from digitcnn.data import load_dataset
    from digitcnn.models.families import build_cnn
    from digitcnn.training.batching import predict_probabilities
    from digitcnn.training.fit import train

    data = load_dataset(DigitsConfig(val_size=0), seed=0)
    weights = {}
    for momentum in (0.0, 0.9):
        keras.utils.set_random_seed(0)
        model = build_cnn(CNNConfig(dropout=0.0), data.input_shape, data.num_classes)
        trainer = TrainerConfig(epochs=2, label_smoothing=0.1)
        result = train(model, data, AdamConfig(ema_momentum=momentum), trainer)
        assert model.loss.get_config()["label_smoothing"] == 0.1
        np.testing.assert_allclose(
            result.validation_probabilities, predict_probabilities(model, data.x_test), atol=1e-6
        )
        weights[momentum] = [np.asarray(w) for w in model.trainable_weights]
    assert not all(np.allclose(a, b) for a, b in zip(*weights.values(), strict=True))

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.validated = [np.asarray(w) for w in self.model.trainable_weights]
            self.model.save(tmp_path / "checkpoint.keras")

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.trained = [np.asarray(w) for w in self.model.trainable_weights]
                raise KeyboardInterrupt

    class FirstWeights(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.trained = [np.asarray(w) for w in self.model.trainable_weights]

    keras.utils.set_random_seed(0)
    model = build_cnn(CNNConfig(), data.input_shape, data.num_classes)
    first = StopAfterFirstEpoch()
    with pytest.raises(KeyboardInterrupt):
        train(model, data, AdamConfig(ema_momentum=0.9), TrainerConfig(epochs=2), [first])
    resumed = keras.saving.load_model(tmp_path / "checkpoint.keras")
    for saved, validated in zip(resumed.trainable_weights, first.validated, strict=True):
        np.testing.assert_array_equal(np.asarray(saved), validated)
    again = FirstWeights()
    train(resumed, data, AdamConfig(), TrainerConfig(epochs=2), [again], initial_epoch=1)
    for trained, before in zip(again.trained, first.trained, strict=True):
        np.testing.assert_array_equal(trained, before)
    assert not all(np.allclose(a, b) for a, b in zip(first.trained, first.validated, strict=True))


def test_a_fit_stopped_early_keeps_the_weight_average_its_last_epoch_validated():
    """A pruned trial (or debug's stop) ends `fit` early; Keras then puts the optimizer's
    slots, the trained weights at that point, into the model: the average goes back."""
    import keras

    from digitcnn.core.config_groups import DigitsConfig, TrainerConfig
    from digitcnn.data import load_dataset
    from digitcnn.models.families import build_cnn
    from digitcnn.training.fit import train

    class PrunedAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.validated = [np.asarray(w) for w in self.model.trainable_weights]
            self.model.stop_training = True

    data = load_dataset(DigitsConfig(), seed=0)
    keras.utils.set_random_seed(0)
    model = build_cnn(CNNConfig(), data.input_shape, data.num_classes)
    stopper = PrunedAfterFirstEpoch()
    train(model, data, AdamConfig(ema_momentum=0.9), TrainerConfig(epochs=3), [stopper])
    for kept, validated in zip(model.trainable_weights, stopper.validated, strict=True):
        np.testing.assert_array_equal(np.asarray(kept), validated)


@pytest.mark.parametrize("spared", [0, 2])
def test_successive_halving_spares_the_first_trials_and_ranks_later_ones_against_them(spared):
    import optuna

    from digitcnn.sweeps.search.pruners import SuccessiveHalvingPruner

    pruner = SuccessiveHalvingPruner(n_startup_trials=spared, min_resource=1, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stopped = []
    for first_epoch in (0.90, 0.50, 0.70):  # trial 1 behind trial 0, trial 2 between them
        trial = study.ask()
        trial.report(first_epoch, 1)
        stopped.append(trial.should_prune())
    # Only the best of three goes past the first rung; trial 1's value counted as a competitor.
    assert stopped == [False, spared < 2, True]
    assert [t.system_attrs.get("completed_rung_0") for t in study.trials] == [0.90, 0.50, 0.70]
    with pytest.raises(ValueError, match="n_startup_trials"):
        SuccessiveHalvingPruner(n_startup_trials=-1)


def test_several_fault_points_fire_each_once_in_its_own_job(tmp_path, monkeypatch):
    from digitcnn.core import faults

    fired = []
    monkeypatch.setattr(faults, "_hold", lambda release: fired.append(release.name))
    monkeypatch.setenv(faults.HOLD_FOLDER_ENV, str(tmp_path))
    monkeypatch.setenv(faults.ENV, "opened:HOLD@job0,epoch-2:HOLD@job1,closed:HOLD")
    faults.point("opened", job=1)  # armed for job 0 only
    faults.point("epoch-2", job=0)
    assert fired == []
    faults.point("opened", job=0)
    faults.point("opened", job=0)  # once
    faults.point("epoch-2", job=1)
    faults.point("closed", job=3)  # any job
    assert fired == ["held-opened-job0", "held-epoch-2-job1", "held-closed"]
    assert os.environ[faults.ENV] == ""


def test_an_error_a_stop_signal_caused_ends_the_work_as_that_stop(monkeypatch):
    import signal

    from digitcnn.core import stops

    with pytest.raises(SystemError), stops.wins():  # no stop: the error is the error
        raise SystemError("bad argument to internal function")
    monkeypatch.setattr(stops, "_received", [signal.SIGTERM])
    with pytest.raises(stops.Stopped) as raised, stops.wins():
        raise SystemError("bad argument to internal function")
    assert raised.value.signum == signal.SIGTERM
    assert isinstance(raised.value.__cause__, SystemError)
