"""IMAGPose core nodes. Declarations only: the work is done in imagpose/ (imagpose.comfyui for ComfyUI glue)."""
from __future__ import annotations

from comfy_api.latest import io

from .imagpose import grid
from .imagpose.comfyui import conditioning, files, loaders, sampling
from .imagpose.comfyui.errors import imagpose_node
from .imagpose.comfyui.memory import MAX_CELL_SIDE
from .imagpose.imaging import FIT_MODES
from .imagpose.pose import DETECTORS

CATEGORY = "IMAGPose"
IMAGPose = io.Custom("IMAGPOSE")
ImageEncoder = io.Custom("IMAGPOSE_IMAGE_ENCODER")
Layout = io.Custom("IMAGPOSE_LAYOUT")
PoseKeypoint = io.Custom("POSE_KEYPOINT")

files.register()


def cell_inputs() -> list[io.Input]:
    return [
        io.Int.Input("width", default=512, min=64, max=MAX_CELL_SIDE, step=64,
                     tooltip="Cell width in pixels (the grid is twice as wide). Use the same value on FLC Encode and ILC Pack."),
        io.Int.Input("height", default=768, min=64, max=MAX_CELL_SIDE, step=64,
                     tooltip="Cell height in pixels (the grid is twice as tall). IMAGPose was trained on 512x768 cells."),
        io.Combo.Input("fit", options=list(FIT_MODES), default="pad",
                       tooltip="How images of another aspect ratio enter a cell: pad (letterbox) or crop (fill, centre crop). Never stretched."),
    ]


def extra_source_inputs() -> list[io.Input]:
    return [
        io.Image.Input(name, optional=True,
                       tooltip="Optional: one more photo of the person, of any size. Fitted to the cell on its own, so "
                               "photos of different sizes are not stretched as Batch Images would. Order: "
                               "source_images, source_2, source_3 (at most 3 in all).")
        for name in conditioning.EXTRA_SOURCES
    ]


def first_or_none(options: list[str]) -> str | None:
    return options[0] if options else None


@imagpose_node
class IMAGPoseModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        lists = files.model_loader_choices()  # each list holds only files of its kind, decided by their weights
        return io.Schema(
            node_id="IMAGPoseModelLoader",
            display_name="IMAGPose Model Loader",
            category=CATEGORY,
            description="Loads the IMAGPose UNet with its cross-view attention, pose guider and patch embedder from "
                        "models/imagpose. The format is recognised from the weights, not the file name.",
            inputs=[
                io.Combo.Input("checkpoint", options=lists["checkpoint"], default=first_or_none(lists["checkpoint"]),
                               tooltip="A pack .safetensors file, an authors' denoising_unet-N.pth, or a folder holding the authors' files."),
                io.Combo.Input("motion_module", options=[loaders.NONE, *lists["motion_module"]], default=loaders.NONE,
                               tooltip="Optional: take the cross-view attention weights from this file (authors' motion_module-N.pth)."),
                io.Combo.Input("pose_guider", options=[loaders.AUTO, *lists["pose_guider"]], default=loaders.AUTO,
                               tooltip="auto: found next to the checkpoint (or inside a pack file). Otherwise this file."),
                io.Combo.Input("patch_embed", options=[loaders.AUTO, *lists["patch_embed"]], default=loaders.AUTO,
                               tooltip="auto: found next to the checkpoint (or inside a pack file). Otherwise this file (authors' patch-N.pth)."),
            ],
            outputs=[
                io.Model.Output("model", display_name="model", tooltip="The IMAGPose UNet for the stock KSampler (v-prediction, zero terminal SNR)."),
                IMAGPose.Output("imagpose", display_name="imagpose", tooltip="Patch embedder for IMAGPose FLC Encode."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, checkpoint, motion_module, pose_guider, patch_embed):
        return loaders.imagpose_fingerprint(checkpoint, motion_module, pose_guider, patch_embed)

    @classmethod
    def check_inputs(cls, checkpoint=None, motion_module=None, pose_guider=None, patch_embed=None) -> None:
        loaders.imagpose_files(checkpoint, motion_module, pose_guider, patch_embed)

    @classmethod
    def execute(cls, checkpoint, motion_module, pose_guider, patch_embed) -> io.NodeOutput:
        return io.NodeOutput(*loaders.load_imagpose(checkpoint, motion_module, pose_guider, patch_embed))


@imagpose_node
class IMAGPoseImageEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        encoders = loaders.image_encoder_choices()
        return io.Schema(
            node_id="IMAGPoseImageEncoderLoader",
            display_name="IMAGPose Image Encoder Loader",
            category=CATEGORY,
            description="Loads the DINOv2 image encoder (dinov2-base) used for feature-level conditioning.",
            inputs=[
                io.Combo.Input("image_encoder", options=encoders, default=first_or_none(encoders),
                               tooltip="A transformers DINOv2 folder or .safetensors file in models/imagpose or models/clip_vision."),
            ],
            outputs=[ImageEncoder.Output("encoder", display_name="image_encoder", tooltip="DINOv2 for IMAGPose FLC Encode.")],
        )

    @classmethod
    def fingerprint_inputs(cls, image_encoder):
        return loaders.image_encoder_fingerprint(image_encoder)

    @classmethod
    def check_inputs(cls, image_encoder=None) -> None:
        loaders.check_image_encoder(image_encoder)

    @classmethod
    def execute(cls, image_encoder) -> io.NodeOutput:
        return io.NodeOutput(loaders.load_image_encoder(image_encoder))


@imagpose_node
class IMAGPoseFLCEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPoseFLCEncode",
            display_name="IMAGPose FLC Encode",
            category=CATEGORY,
            description="Feature-level conditioning: DINOv2 tokens of the reference plus patch tokens of its VAE latent "
                        "at cell size. Negative is zeros of the same shape.",
            inputs=[
                ImageEncoder.Input("image_encoder", tooltip="From IMAGPose Image Encoder Loader."),
                IMAGPose.Input("imagpose", tooltip="From IMAGPose Model Loader."),
                io.Vae.Input("vae", tooltip="The SD1.5 VAE (sd-vae-ft-mse)."),
                io.Image.Input("source_images", tooltip="1 to 3 photos of the person (a batch; or one photo here and "
                                                        "the others on source_2 / source_3 when their sizes differ)."),
                io.Int.Input("reference_index", default=0, min=0, max=2,
                             tooltip="Which source image is the reference (0 = first; counted over source_images, "
                                     "source_2, source_3)."),
                io.Boolean.Input("use_all_sources", default=False,
                                 tooltip="Beyond the paper: use every source's tokens side by side instead of one reference."),
                *cell_inputs(),
                *extra_source_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip="Reference tokens."),
                io.Conditioning.Output("negative", display_name="negative", tooltip="Zeros of the same shape (classifier-free guidance)."),
            ],
        )

    @classmethod
    def check_inputs(cls, width=None, height=None) -> None:
        conditioning.check_cell(height, width, conditioning.FLC_MULTIPLE)

    @classmethod
    def execute(cls, image_encoder, imagpose, vae, source_images, reference_index, use_all_sources,
                width, height, fit, source_2=None, source_3=None) -> io.NodeOutput:
        return io.NodeOutput(*conditioning.flc_conditioning(
            image_encoder, imagpose, vae, source_images, reference_index, use_all_sources, height, width, fit,
            source_2, source_3))


@imagpose_node
class IMAGPoseILCPack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPoseILCPack",
            display_name="IMAGPose ILC Pack",
            category=CATEGORY,
            description="Image-level conditioning: packs sources and target poses into 2x2 grids (TL, TR, BL, BR; "
                        "sources first, targets last, spare cells repeat the sources), with the source flag, the "
                        "masked grid latent and the pose grid attached to both conditionings. Any number of target "
                        "poses: every grid holds all sources and the next 4 - S targets; the grids go to the KSampler "
                        "as one latent batch, or in chunks (list outputs: ComfyUI runs the KSampler once per chunk).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From IMAGPose FLC Encode."),
                io.Conditioning.Input("negative", tooltip="From IMAGPose FLC Encode."),
                io.Vae.Input("vae", tooltip="The SD1.5 VAE (sd-vae-ft-mse)."),
                io.Image.Input("source_images", tooltip="1 to 3 photos of the person (a batch), same order as on FLC Encode."),
                io.Image.Input("target_poses", optional=True,
                               tooltip=f"Rendered target skeletons (a batch, e.g. the frames of a pose video), 1 to "
                                       f"{grid.MAX_TARGET_POSES}; one image comes out per pose, in this order. Or "
                                       f"connect target_keypoints instead."),
                io.Image.Input("source_poses", optional=True,
                               tooltip="Rendered skeletons of the source photos, one per source. If not connected they are extracted."),
                *cell_inputs(),
                io.Combo.Input("source_pose_detector", options=list(DETECTORS), default="auto",
                               tooltip="Used only when source_poses is not connected: auto picks DWPose when its ONNX files exist, else MediaPipe."),
                *extra_source_inputs(),
                PoseKeypoint.Input("target_keypoints", optional=True,
                                   tooltip="Instead of target_poses: POSE_KEYPOINT frames (e.g. DWPose Estimator on a "
                                           "video, or IMAGPose Pose Retarget), one target pose per frame, all on one "
                                           "canvas, each showing a person; drawn as in training (body and hands)."),
                io.Combo.Input("batching", options=list(conditioning.BATCHING), default="one_batch", optional=True,
                               tooltip="one_batch: all grids go to the KSampler together (fastest; memory grows with "
                                       "the number of grids, at most grids_per_batch). chunks: batches of at most "
                                       "grids_per_batch grids, sampled one after another (memory stays bounded)."),
                io.Int.Input("grids_per_batch", default=conditioning.DEFAULT_GRIDS_PER_BATCH, min=1,
                             max=conditioning.MAX_GRIDS_PER_BATCH, optional=True,
                             tooltip="The most grids sampled together. A grid holds 4 - (number of sources) targets."),
            ],
            outputs=[
                io.Conditioning.Output("packed_positive", display_name="positive", is_output_list=True,
                                       tooltip="For the KSampler's positive (one entry per chunk of grids)."),
                io.Conditioning.Output("packed_negative", display_name="negative", is_output_list=True,
                                       tooltip="For the KSampler's negative (one entry per chunk of grids)."),
                io.Latent.Output("latent", display_name="latent", is_output_list=True,
                                 tooltip="Empty grid latents for the KSampler (denoise 1.0), one batch per chunk; "
                                         "batch_index numbers the grids, so each grid's noise does not depend on chunking."),
                Layout.Output("layout", display_name="layout",
                              tooltip="Which cells of which grid are targets, for IMAGPose Grid Unpack."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="What was packed, per grid: the masked grid and the pose grid side by side, "
                                        "cells labelled S1..S3 (sources) and T1..TN (target poses), targets framed."),
            ],
        )

    @classmethod
    def check_inputs(cls, width=None, height=None) -> None:
        conditioning.check_cell(height, width, conditioning.ILC_MULTIPLE)

    @classmethod
    def execute(cls, positive, negative, vae, source_images, target_poses=None, width=512, height=768, fit="pad",
                source_pose_detector="auto", source_poses=None, source_2=None, source_3=None, target_keypoints=None,
                batching="one_batch", grids_per_batch=conditioning.DEFAULT_GRIDS_PER_BATCH) -> io.NodeOutput:
        extract = None if source_poses is not None else loaders.pose_extractor(source_pose_detector)
        return io.NodeOutput(*conditioning.ilc_conditioning(
            positive, negative, vae, source_images, target_poses, source_poses, height, width, fit, extract,
            source_2=source_2, source_3=source_3, target_keypoints=target_keypoints, batching=batching,
            grids_per_batch=grids_per_batch))


@imagpose_node
class IMAGPoseGridUnpack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPoseGridUnpack",
            display_name="IMAGPose Grid Unpack",
            category=CATEGORY,
            description="Cuts the decoded 2x2 grids into the generated images: exactly one per target pose, in the order "
                        "the target poses were given (source and spare cells dropped). Takes the decoded chunks as a "
                        "list and joins them.",
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The VAE-decoded grids (every chunk, in order)."),
                Layout.Input("layout", tooltip="From IMAGPose ILC Pack."),
                io.Combo.Input("which", options=list(conditioning.UNPACK_CHOICES), default="targets",
                               tooltip="targets: only the generated cells; all: the four cells TL, TR, BL, BR of every grid."),
            ],
            outputs=[io.Image.Output("cells", display_name="images", tooltip="One image per target pose (or four per grid).")],
        )

    @classmethod
    def execute(cls, images, layout, which) -> io.NodeOutput:
        return io.NodeOutput(conditioning.unpack_images(images, layout, which))


@imagpose_node
class IMAGPoseTrailingSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPoseTrailingSigmas",
            display_name="IMAGPose Trailing Sigmas",
            category=CATEGORY,
            description="The sigmas of the authors' DDIM sampling (trailing timestep spacing) for SamplerCustom / "
                        "SamplerCustomAdvanced, at any step count. The KSampler's 'simple' scheduler gives the same "
                        "only when the step count divides 1000 (e.g. 20, the paper's setting; not 30).",
            inputs=[
                io.Model.Input("model", tooltip="The IMAGPose model: its own noise schedule is used."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Sampling steps (the paper: 20)."),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas", tooltip="For SamplerCustom's sigmas input.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(sampling.trailing_sigmas(model, steps))


NODES = [IMAGPoseModelLoader, IMAGPoseImageEncoderLoader, IMAGPoseFLCEncode, IMAGPoseILCPack, IMAGPoseGridUnpack,
         IMAGPoseTrailingSigmas]
