// COCO run-length masks as pycocotools writes them (maskApi.c rleToString / rleFrString).
//
// A mask of size [h, w] is read column-major; the run lengths alternate 0-runs and 1-runs,
// starting with a 0-run. The compressed `counts` string codes each run length (minus the one two
// back, from the fourth on) in 5-bit groups, low group first, 0x20 = "more groups follow", the
// last group's 0x10 = negative, each group plus 48.

/** Decode a compressed COCO `counts` string into run lengths (an array of integers). */
export function rleCounts(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0;
    let scale = 1;
    let more = true;
    while (more) {
      if (p >= counts.length) throw new Error("COCO RLE counts string ends inside a number");
      const c = counts.charCodeAt(p++) - 48;
      if (c < 0 || c > 63) throw new Error(`COCO RLE counts has a byte out of range at ${p - 1}`);
      x += (c & 0x1f) * scale;  // arithmetic, not shifts: JS shifts wrap at 32 bits
      more = (c & 0x20) !== 0;
      scale *= 32;
      if (!more && (c & 0x10)) x -= scale;
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    if (x < 0) throw new Error("COCO RLE counts decodes to a negative run length");
    runs.push(x);
  }
  return runs;
}

/**
 * Paint one COCO RLE mask {size: [h, w], counts} into `labels` (Uint8Array, h*w, row-major) with
 * value `label`; later calls overwrite earlier ones where masks overlap. Returns the pixel count.
 */
export function paintRle(rle, labels, label) {
  const [h, w] = rle.size;
  if (labels.length !== h * w) throw new Error(`mask is ${w}x${h} but the label map has ${labels.length} pixels`);
  const runs = rleCounts(rle.counts);
  let total = 0;
  for (const r of runs) total += r;
  if (total !== h * w) throw new Error(`COCO RLE runs cover ${total} pixels, the mask size ${w}x${h} needs ${h * w}`);
  let j = 0;
  let area = 0;
  for (let i = 0; i < runs.length; i++) {
    const run = runs[i];
    if (i % 2 === 1) {
      let left = run;
      let k = j;
      while (left > 0) {  // one column segment at a time: index k = col * h + row
        const col = Math.floor(k / h);
        const row = k - col * h;
        const n = Math.min(left, h - row);
        for (let r = row, o = row * w + col; r < row + n; r++, o += w) labels[o] = label;
        k += n;
        left -= n;
      }
      area += run;
    }
    j += run;
  }
  return area;
}

/** Decode one mask to a row-major Uint8Array of 0/1 (for tests and tools). */
export function decodeMask(rle) {
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  paintRle(rle, out, 1);
  return out;
}
