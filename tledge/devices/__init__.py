"""Device profiles, detection, Edge TPU helpers and deploy bundles. No TensorFlow anywhere here.

    from tledge.devices import resolve, detect
    opts = resolve("rpi4", threads=2)       # explicit values win over the profile
    model = load_for_device("out/model_int8.tflite", "rpi4")
"""
from tledge.devices.detect import Detection, Evidence, detect
from tledge.devices.edgetpu import CompileResult, edgetpu_compile, load_edgetpu_delegate
from tledge.devices.options import (Options, add_device_argument, device_from_args, load_delegates,
                                    load_for_device, pick_model, resolve)
from tledge.devices.profiles import (PROFILES, Accel, Arch, Family, Format, Precision, Profile, Provider,
                                     Target, get_profile, profile_names)

__all__ = [
    "PROFILES", "Accel", "Arch", "CompileResult", "Detection", "Evidence", "Family", "Format", "Options",
    "Precision", "Profile", "Provider", "Target", "add_device_argument", "detect", "device_from_args",
    "edgetpu_compile", "get_profile", "load_delegates", "load_edgetpu_delegate", "load_for_device",
    "pick_model", "profile_names", "resolve",
]
