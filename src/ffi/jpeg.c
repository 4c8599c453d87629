/* JPEG decoding through libjpeg-turbo's libjpeg API, with the settings of Pillow's decoder
 * (src/libImaging/JpegDecode.c): libjpeg's defaults (ISLOW DCT, fancy upsampling, block
 * smoothing), the colour space guessed from the file's markers, the output colour space set
 * from the number of components (1: grayscale, 3: RGB, 4: CMYK, YCCK converted to CMYK), and
 * an optional 1/2, 1/4 or 1/8 DCT-domain scale (Pillow's `draft`).
 *
 * Pillow feeds a suspending source and raises "image file is truncated" when the decoder asks
 * for more data than the file has while reading the header, starting the decompression (which
 * reads every scan of a progressive file) or reading scanlines; running out of data in
 * jpeg_finish_decompress, after the last scanline, is not an error. Here the whole file is in
 * memory: the first request past its end is that condition, and it longjmps out.
 *
 * libjpeg's errors longjmp back to the function that called into it (never exit()); its
 * warnings are counted and ignored, as Pillow ignores them. */

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

/* Status codes of mn_jpeg_open and mn_jpeg_read. */
enum { MN_JPEG_OK = 0, MN_JPEG_ERROR = 1, MN_JPEG_TRUNCATED = 2 };

/* Where the decoder is: running out of data while finishing is not an error. */
enum { PHASE_DECODE = 0, PHASE_FINISH = 1 };

/* What a longjmp carries (setjmp returns it). */
enum { JUMP_ERROR = 1, JUMP_END_OF_DATA = 2 };

/* The size of a message buffer passed in (libjpeg's JMSG_LENGTH_MAX). */
#define MN_JPEG_MSG 200

typedef struct MnJpeg {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr err;
  struct jpeg_source_mgr src;
  jmp_buf jump;
  int phase;
  char message[JMSG_LENGTH_MAX];
} MnJpeg;

/* The header as read, and the output the decoder will write. */
typedef struct MnJpegHeader {
  uint32_t width, height;          /* the frame's size */
  int32_t components;              /* in the frame */
  int32_t precision;               /* bits per sample */
  uint32_t out_width, out_height;  /* after scaling */
  int32_t out_components;          /* 1 (L), 3 (RGB) or 4 (CMYK, as libjpeg writes it) */
} MnJpegHeader;

static MnJpeg *of(j_common_ptr cinfo) {
  return (MnJpeg *)((char *)cinfo - offsetof(MnJpeg, cinfo));
}

static void error_exit(j_common_ptr cinfo) {
  MnJpeg *h = of(cinfo);
  (*cinfo->err->format_message)(cinfo, h->message);
  longjmp(h->jump, JUMP_ERROR);
}

static void output_message(j_common_ptr cinfo) { (void)cinfo; }

static void init_source(j_decompress_ptr cinfo) { (void)cinfo; }

static void term_source(j_decompress_ptr cinfo) { (void)cinfo; }

/* Called only when every byte has been consumed: the file ends before the decoder does. */
static boolean fill_input_buffer(j_decompress_ptr cinfo) {
  longjmp(of((j_common_ptr)cinfo)->jump, JUMP_END_OF_DATA);
  return FALSE;
}

static void skip_input_data(j_decompress_ptr cinfo, long num_bytes) {
  struct jpeg_source_mgr *src = cinfo->src;
  if (num_bytes <= 0) return;
  if ((unsigned long)num_bytes > src->bytes_in_buffer) {
    src->next_input_byte += src->bytes_in_buffer;
    src->bytes_in_buffer = 0;
    fill_input_buffer(cinfo);
  }
  src->next_input_byte += num_bytes;
  src->bytes_in_buffer -= (size_t)num_bytes;
}

/* Copies the handle's message to `message` (MN_JPEG_MSG bytes) and returns the status for a
 * longjmp that arrived with `jumped`. */
static int failed(MnJpeg *h, int jumped, char *message) {
  int status = MN_JPEG_ERROR;
  if (jumped == JUMP_END_OF_DATA) {
    strcpy(h->message, "image file is truncated");
    status = MN_JPEG_TRUNCATED;
  }
  memcpy(message, h->message, MN_JPEG_MSG);
  message[MN_JPEG_MSG - 1] = 0;
  return status;
}

/* Reads the header of `data` (which must outlive the handle): the frame's size, components and
 * precision. `*out` receives a handle for the other functions whatever the status (NULL only
 * when it cannot be allocated); `message` (MN_JPEG_MSG bytes) says why on an error.
 * `max_memory` bounds libjpeg's large buffers (0: unbounded). */
int mn_jpeg_open(const uint8_t *data, size_t len, long max_memory, MnJpeg **out,
                 MnJpegHeader *header, char *message) {
  MnJpeg *h = (MnJpeg *)calloc(1, sizeof(MnJpeg));
  *out = h;
  if (!h) {
    strcpy(message, "out of memory: cannot allocate the JPEG decoder");
    return MN_JPEG_ERROR;
  }
  h->cinfo.err = jpeg_std_error(&h->err);
  h->err.error_exit = error_exit;
  h->err.output_message = output_message;
  int jumped = setjmp(h->jump);
  if (jumped) return failed(h, jumped, message);
  jpeg_create_decompress(&h->cinfo);
  h->cinfo.mem->max_memory_to_use = max_memory;
  h->src.init_source = init_source;
  h->src.fill_input_buffer = fill_input_buffer;
  h->src.skip_input_data = skip_input_data;
  h->src.resync_to_restart = jpeg_resync_to_restart;
  h->src.term_source = term_source;
  h->src.next_input_byte = data;
  h->src.bytes_in_buffer = len;
  h->cinfo.src = &h->src;
  jpeg_read_header(&h->cinfo, TRUE);
  header->width = h->cinfo.image_width;
  header->height = h->cinfo.image_height;
  header->components = h->cinfo.num_components;
  header->precision = h->cinfo.data_precision;
  return MN_JPEG_OK;
}

/* Sets the output as Pillow's decoder does for the file's number of components, scaled by
 * 1/`scale_denom` (1, 2, 4 or 8), and writes its size to `header`. */
int mn_jpeg_scale(MnJpeg *h, int scale_denom, MnJpegHeader *header, char *message) {
  int jumped = setjmp(h->jump);
  if (jumped) return failed(h, jumped, message);
  struct jpeg_decompress_struct *c = &h->cinfo;
  switch (c->num_components) {
    case 1: c->out_color_space = JCS_GRAYSCALE; break;
    case 3: c->out_color_space = JCS_RGB; break;
    case 4: c->out_color_space = JCS_CMYK; break;
    default: c->out_color_space = JCS_UNKNOWN; break;
  }
  if (scale_denom > 1) {
    c->scale_num = 1;
    c->scale_denom = (unsigned int)scale_denom;
  }
  jpeg_calc_output_dimensions(c);
  header->out_width = c->output_width;
  header->out_height = c->output_height;
  header->out_components = c->out_color_components;
  return MN_JPEG_OK;
}

/* Decodes the image opened by mn_jpeg_open into `pixels`, rows of `stride` bytes (at least
 * out_width * out_components), out_height rows. */
int mn_jpeg_read(MnJpeg *h, uint8_t *pixels, size_t stride, char *message) {
  int jumped = setjmp(h->jump);
  if (jumped == JUMP_END_OF_DATA && h->phase == PHASE_FINISH) {
    return MN_JPEG_OK; /* Pillow's decoder is done once every scanline is out */
  }
  if (jumped) return failed(h, jumped, message);
  struct jpeg_decompress_struct *c = &h->cinfo;
  jpeg_start_decompress(c);
  while (c->output_scanline < c->output_height) {
    JSAMPROW rows[8];
    JDIMENSION n = c->output_height - c->output_scanline;
    if (n > 8) n = 8;
    for (JDIMENSION i = 0; i < n; i++) {
      rows[i] = pixels + (size_t)(c->output_scanline + i) * stride;
    }
    if (jpeg_read_scanlines(c, rows, n) == 0) {
      /* Only a suspending source returns no lines, and this one does not suspend. */
      strcpy(message, "the JPEG decoder returned no lines");
      return MN_JPEG_ERROR;
    }
  }
  h->phase = PHASE_FINISH;
  jpeg_finish_decompress(c);
  return MN_JPEG_OK;
}

/* Frees a handle from mn_jpeg_open (NULL is allowed). */
void mn_jpeg_close(MnJpeg *h) {
  if (!h) return;
  jpeg_destroy_decompress(&h->cinfo);
  free(h);
}
