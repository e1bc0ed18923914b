"""Video output nodes."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io, ui

from .video_file import write_video


class SpacetimeSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeSaveVideo",
            display_name="Save Video (Spacetime)",
            category="Spacetime/video",
            description="Encode frames to an MP4 (H.264) or WebM file in the output folder; "
                        "the workflow and prompt are stored in the file's metadata.",
            inputs=[
                io.Image.Input("images", tooltip="frames [N, H, W, 3]"),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0),
                io.String.Input("filename_prefix", default="spacetime/video"),
                io.Combo.Input("format", options=["mp4", "webm"], default="mp4"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, fps, filename_prefix, format) -> io.NodeOutput:
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, out_dir, images.shape[2], images.shape[1])
        filename = f"{name}_{counter:05}.{format}"
        metadata = {}
        if cls.hidden.prompt is not None:
            metadata["prompt"] = cls.hidden.prompt
        if cls.hidden.extra_pnginfo:
            metadata.update(cls.hidden.extra_pnginfo)
        write_video(f"{folder}/{filename}", images, fps, metadata)
        saved = ui.SavedResult(filename, subfolder, io.FolderType.output)
        return io.NodeOutput(ui=ui.PreviewVideo([saved]))


NODES = [SpacetimeSaveVideo]
