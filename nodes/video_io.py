"""Video file nodes: Save Video (MP4/WebM/GIF with the workflow in its metadata) and Load Video
(frame range, stride, resize; files from ComfyUI's input folder only). Both also speak
ComfyUI's VIDEO type, so they interoperate with CreateVideo / SaveVideo / LoadVideo."""
from __future__ import annotations

import itertools
import os
from fractions import Fraction

import folder_paths
from comfy_api.latest import InputImpl, Types, io, ui

from .errors import blamed_on, node_error
from .files import file_inside
from .video_file import FORMATS, READABLE, UnreadableVideo, VideoWriteError, read_video, write_new_video
from .validation import SpacetimeNode, allow_large_input, check_fits


def _summary(prompt: dict | None) -> dict:
    """The seeds and text prompts of an API-format graph, for quick reading of a file."""
    seeds, texts = {}, {}
    for nid, node in (prompt or {}).items():
        for key, value in node.get("inputs", {}).items():
            if key in ("seed", "noise_seed") and isinstance(value, int):
                seeds[nid] = value
            elif key in ("text", "prompt") and isinstance(value, str):
                texts[nid] = value
    return {"seeds": seeds, "prompts": texts}


def _prefix_problem(prefix: str, out_dir: str) -> str | None:
    """Why ``filename_prefix`` may not be used (None: fine): it must name a file inside the
    output folder (no absolute path, no ``..`` that leads out; folders linked in by whoever runs
    the server are theirs to choose, as in ComfyUI)."""
    if os.path.isabs(prefix) or os.path.splitdrive(prefix)[0]:
        return (f"{prefix!r} is an absolute path; give a name inside ComfyUI's output folder, "
                "e.g. 'spacetime/video'")
    name = os.path.basename(os.path.normpath(prefix))
    if name in ("", ".", ".."):
        return f"{prefix!r} has no file name; give one such as 'spacetime/video'"
    root = os.path.abspath(out_dir)
    folder = os.path.normpath(os.path.join(root, os.path.dirname(os.path.normpath(prefix))))
    if os.path.commonpath([root, folder]) != root:
        return f"{prefix!r} leads outside ComfyUI's output folder; give a name inside it, e.g. 'spacetime/video'"
    return None


class SpacetimeSaveVideo(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeSaveVideo",
            display_name="Save Video (Spacetime)",
            category="Spacetime/video",
            description="Encode frames to MP4 (H.264), WebM (VP9) or GIF in the output folder; the "
                        "workflow, the API graph, its seeds and prompts go into the file's metadata.",
            inputs=[
                io.Image.Input("images", optional=True, tooltip="frames [N, H, W, 3]"),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="frames per second of the file"),
                io.String.Input("filename_prefix", default="spacetime/video",
                                tooltip="file name start inside the output folder; a/b puts it in subfolder a"),
                io.Combo.Input("format", options=list(FORMATS), default="mp4",
                               tooltip="mp4 (H.264), webm (VP9) or gif"),
                io.Video.Input("video", optional=True, tooltip="a ComfyUI VIDEO instead of frames "
                               "(its own frame rate is used)"),
                io.String.Input("caption", optional=True, force_input=True,
                                tooltip="the text the video was generated from (e.g. the Prompt "
                                        "Expander's output), stored in the file's metadata"),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fps, filename_prefix, format, images=None, video=None, caption=None) -> io.NodeOutput:
        if images is None and video is None:
            raise node_error(cls, "images", "connect frames (IMAGE) or a VIDEO to save")
        if images is None:
            parts = video.get_components()
            images, fps = parts.images, float(parts.frame_rate)
        out_dir = folder_paths.get_output_directory()
        problem = _prefix_problem(filename_prefix, out_dir)
        if problem:
            raise node_error(cls, "filename_prefix", problem)
        try:
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, out_dir, images.shape[2], images.shape[1])
        except Exception as e:  # noqa: BLE001 - ComfyUI refuses paths out with a plain Exception
            raise node_error(cls, "filename_prefix", f"{filename_prefix!r} cannot be used in ComfyUI's output "
                             f"folder ({(str(e).strip().splitlines() or [type(e).__name__])[0]}); give a name inside it, e.g. "
                             "'spacetime/video'") from None
        metadata = {}
        if cls.hidden.prompt is not None:
            metadata["prompt"] = cls.hidden.prompt
            metadata["spacetime"] = _summary(cls.hidden.prompt)
        if cls.hidden.extra_pnginfo:
            # extra_pnginfo comes straight from the request: keep only what the web UI sends, a dict
            extra = cls.hidden.extra_pnginfo
            if isinstance(extra, dict):
                metadata.update({k: v for k, v in extra.items() if isinstance(k, str)})
        if caption:
            metadata["caption"] = caption
        # ComfyUI's counter is the highest taken + 1; should that name exist by now (another
        # save, or a file made by hand), the next free one is taken: an output is never replaced
        names = (f"{name}_{c:05}_.{format}" for c in itertools.count(counter))
        try:
            with blamed_on(cls, "images"):
                path = write_new_video(folder, names, images, fps, metadata)
        except VideoWriteError as e:
            raise node_error(cls, "filename_prefix", f"{e}. Free some disk space or choose another "
                             "folder, then run it again") from None
        saved = ui.SavedResult(path.name, subfolder, io.FolderType.output)
        return io.NodeOutput(ui=ui.PreviewVideo([saved]))


def _input_videos() -> list[str]:
    root = folder_paths.get_input_directory()
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(READABLE):
                found.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(found)


def resolve_input_file(name: str) -> str | None:
    """The path of ``name`` inside ComfyUI's input folder, or None when it is missing or points
    outside it (``..``, absolute paths, links out); nothing is opened."""
    return file_inside([folder_paths.get_input_directory()], name)


class SpacetimeLoadVideo(SpacetimeNode):
    FOLDERS = {"video": "input"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeLoadVideo",
            display_name="Load Video (Spacetime)",
            category="Spacetime/video",
            description="Frames of a video from ComfyUI's input folder: a range, every n-th frame, "
                        "optionally resized.",
            inputs=[
                io.Combo.Input("video", options=_input_videos(), tooltip="a video file in ComfyUI's input folder"),
                io.Int.Input("start_frame", default=0, min=0, max=100000, tooltip="the first frame to read (0 = the first)"),
                io.Int.Input("frame_count", default=0, min=0, max=100000, tooltip="0 = all"),
                io.Int.Input("stride", default=1, min=1, max=100, tooltip="keep every n-th frame"),
                io.Int.Input("width", default=0, min=0, max=16384, step=8, tooltip="0 = keep"),
                io.Int.Input("height", default=0, min=0, max=16384, step=8, tooltip="0 = keep"),
                allow_large_input(),
            ],
            outputs=[io.Image.Output("images", display_name="images"), io.Float.Output("fps", display_name="fps"),
                     io.Int.Output("frames", display_name="frame_count"),
                     io.Video.Output("clip", display_name="video")],
        )

    @classmethod
    def fingerprint_inputs(cls, video, **_) -> float:
        path = resolve_input_file(video)
        return os.path.getmtime(path) if path else 0.0

    @classmethod
    def execute(cls, video, start_frame, frame_count, stride, width, height,
                allow_large=False) -> io.NodeOutput:
        path = resolve_input_file(video)
        if path is None:
            raise node_error(cls, "video", f"{video!r} is not a file inside ComfyUI's input folder")
        size = None
        if width or height:
            if not (width and height):
                raise node_error(cls, "width/height", "set both (or both 0 to keep the size)")
            size = (width, height)

        def fits(need: int) -> None:  # before decoding: frames kept x height x width x 3 x 4 bytes
            check_fits(cls, "width/height/frame_count", need, "the decoded clip", allow_large)

        with blamed_on(cls, "start_frame"):
            try:
                frames, fps = read_video(path, start_frame, frame_count, stride, size, check=fits)
            except UnreadableVideo as e:
                raise node_error(cls, "video", str(e)) from None
        clip = InputImpl.VideoFromComponents(
            Types.VideoComponents(images=frames, frame_rate=Fraction(fps).limit_denominator(1000)))
        return io.NodeOutput(frames, fps, frames.shape[0], clip)


NODES = [SpacetimeSaveVideo, SpacetimeLoadVideo]
