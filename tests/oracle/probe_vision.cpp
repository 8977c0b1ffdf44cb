// vramgate vision probe: asks the vendored llama.cpp's clip (tools/mtmd) what a projector allocates.
//
// llama-server (and so Ollama >= 0.30) creates the projector with mtmd_init_from_file: clip_init
// with the server's flash-attention mode and --image-min/max-tokens, then a warmup that reserves
// the encoder's compute buffer for a warmup image. This probe does the same with no_alloc (no
// weight is read) and prints, in bytes, clip's own counters: the weights (clip_ctx::mem_usage) and
// the compute buffer of the warmup reserve (clip_ctx::mem_compute). A real image as large as the
// preprocessor allows grows that buffer at encode time (ggml-alloc re-reserves a larger graph),
// so the probe also reserves the graph of the largest image (a square of sqrt(image_max_pixels),
// or image_size for fixed-size encoders) and of any --image W H given, each in a fresh scheduler.
//
// clip.cpp is compiled into this translation unit: clip_ctx and clip_model_loader are private to
// it, and they are the only way to read the per-buffer byte counts.
//
// Arguments: -m MMPROJ [-fa on|off|auto] [--image-min-tokens N] [--image-max-tokens N] [--image W H]...
//            [--trace W H]...
#include "clip.cpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

static void log_to_stderr(ggml_log_level level, const char * text, void * /*user_data*/) {
    (void) level;
    fputs(text, stderr);
}

static size_t sum_bytes(const std::map<ggml_backend_dev_t, size_t> & by_dev) {
    size_t total = 0;
    for (const auto & [dev, size] : by_dev) {
        (void) dev;
        total += size;
    }
    return total;
}

// reserve the graph of one image in a fresh scheduler (the old one keeps its largest buffer)
static size_t reserve_image(clip_ctx & ctx, int nx, int ny, int & n_tokens, int & n_patches) {
    ctx.sched.reset(ggml_backend_sched_new(ctx.backend_ptrs.data(), ctx.backend_buft.data(),
                                           ctx.backend_ptrs.size(), 8192, false, true));
    clip_image_f32_batch batch;
    clip_image_f32 img;
    img.set_size({nx, ny}, false, false);
    batch.entries.push_back(img);
    clip_model_loader::reserve_compute_meta(ctx, batch);
    n_tokens = clip_n_output_tokens(&ctx, &batch.entries[0]);
    const int patch = ctx.model.hparams.patch_size;
    n_patches = (nx / patch) * (ny / patch);
    return sum_bytes(ctx.mem_compute);
}

// --trace W H: allocate the graph of one image for real (CPU memory, never touched) and print every
// tensor's place in the compute buffer, to see which tensors are live at the peak
static void trace_image(clip_ctx & ctx, int nx, int ny) {
    ctx.sched.reset(ggml_backend_sched_new(ctx.backend_ptrs.data(), ctx.backend_buft.data(),
                                           ctx.backend_ptrs.size(), 8192, false, true));
    clip_image_f32_batch batch;
    clip_image_f32 img;
    img.set_size({nx, ny}, false, false);
    batch.entries.push_back(img);
    ggml_cgraph * gf = clip_get_graph_builder(&ctx, batch)->build();
    ggml_backend_sched_reserve(ctx.sched.get(), gf);
    if (!ggml_backend_sched_alloc_graph(ctx.sched.get(), gf)) {
        fprintf(stdout, "{\"error\": \"trace: allocation failed\"}\n");
        return;
    }
    auto print = [&](const char * kind, int i, ggml_tensor * t) {
        if (t->buffer == nullptr || t->data == nullptr) {
            return;
        }
        if (t->buffer == ctx.buf.get()) {
            fprintf(stdout, "{\"trace\": \"weight\", \"i\": %d, \"id\": %zu, \"name\": \"%s\"}\n",
                    i, (size_t) (uintptr_t) t, t->name);
            return;
        }
        const size_t off = (const char *) t->data - (const char *) ggml_backend_buffer_get_base(t->buffer);
        std::string srcs;
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            if (t->src[j] != nullptr) {
                srcs += (srcs.empty() ? "" : ", ") + std::to_string((uintptr_t) t->src[j]);
            }
        }
        fprintf(stdout, "{\"trace\": \"%s\", \"i\": %d, \"id\": %zu, \"op\": \"%s\", \"name\": \"%s\", "
                "\"type\": \"%s\", \"ne\": [%lld, %lld, %lld, %lld], \"bytes\": %zu, \"offset\": %zu, "
                "\"view_of\": %zu, \"src\": [%s]}\n",
                kind, i, (size_t) (uintptr_t) t, ggml_op_desc(t), t->name, ggml_type_name(t->type),
                (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                ggml_nbytes(t), off, (size_t) (uintptr_t) t->view_src, srcs.c_str());
    };
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        print("node", i, ggml_graph_node(gf, i));
    }
    std::unordered_set<ggml_tensor *> leafs;  // the graph's inputs: sources that are not nodes
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            ggml_tensor * src = node->src[j];
            if (src != nullptr && src->op == GGML_OP_NONE && leafs.insert(src).second) {
                print("leaf", i, src);
            }
        }
    }
}

int main(int argc, char ** argv) {
    std::string path;
    clip_flash_attn_type fa = CLIP_FLASH_ATTN_TYPE_AUTO;  // llama-server's default (-fa auto)
    int min_tokens = -1;
    int max_tokens = -1;
    std::vector<std::pair<int, int>> images;
    std::vector<std::pair<int, int>> traces;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "-m" && i + 1 < argc) {
            path = argv[++i];
        } else if ((a == "-fa" || a == "--flash-attn") && i + 1 < argc) {
            const std::string v = argv[++i];
            fa = v == "on" ? CLIP_FLASH_ATTN_TYPE_ENABLED : v == "off" ? CLIP_FLASH_ATTN_TYPE_DISABLED
                                                                       : CLIP_FLASH_ATTN_TYPE_AUTO;
        } else if (a == "--image-min-tokens" && i + 1 < argc) {
            min_tokens = atoi(argv[++i]);
        } else if (a == "--image-max-tokens" && i + 1 < argc) {
            max_tokens = atoi(argv[++i]);
        } else if (a == "--image" && i + 2 < argc) {
            const int w = atoi(argv[++i]);
            const int h = atoi(argv[++i]);
            images.emplace_back(w, h);
        } else if (a == "--trace" && i + 2 < argc) {
            const int w = atoi(argv[++i]);
            const int h = atoi(argv[++i]);
            traces.emplace_back(w, h);
        } else {
            fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (path.empty()) {
        fprintf(stderr, "usage: %s -m MMPROJ [-fa on|off|auto] [--image-min-tokens N] [--image-max-tokens N] [--image W H]...\n", argv[0]);
        return 2;
    }

    ggml_log_set(log_to_stderr, nullptr);
    clip_context_params params {
        /* use_gpu           */ true,   // llama-server's default; the CPU build has no GPU: CPU backend
        /* device            */ nullptr,
        /* flash_attn_type   */ fa,
        /* image_min_tokens  */ min_tokens,
        /* image_max_tokens  */ max_tokens,
        /* warmup            */ true,
        /* cb_eval           */ nullptr,
        /* cb_eval_user_data */ nullptr,
        /* no_alloc          */ true,
        /* progress_callback */ nullptr,
        /* progress_callback_user_data */ nullptr,
    };
    clip_init_result res = clip_init(path.c_str(), params);
    clip_ctx * ctx = res.ctx_v;
    if (ctx == nullptr) {
        fprintf(stdout, "{\"error\": \"failed to load the projector\"}\n");
        return 1;
    }
    const clip_hparams & hp = ctx->model.hparams;
    const size_t weights = sum_bytes(ctx->mem_usage);
    const size_t warmup_compute = sum_bytes(ctx->mem_compute);
    const bool fa_on = ctx->flash_attn_type == CLIP_FLASH_ATTN_TYPE_ENABLED;
    const int merge = hp.n_merge > 0 ? hp.n_merge : 1;
    const int align = hp.patch_size * merge;

    clip_image_f32 warm;
    warm.set_size({hp.warmup_image_size, hp.warmup_image_size}, true, false);
    const int warm_patches = (hp.warmup_image_size / hp.patch_size) * (hp.warmup_image_size / hp.patch_size);

    fprintf(stdout,
            "{\"projector\": \"%s\", \"weights\": %zu, \"warmup_compute\": %zu, \"flash_attn\": %s, "
            "\"n_embd\": %d, \"n_layer\": %d, \"n_head\": %d, \"n_ff\": %d, \"patch_size\": %d, "
            "\"image_size\": %d, \"n_merge\": %d, \"image_min_pixels\": %d, \"image_max_pixels\": %d, "
            "\"warmup_image_size\": %d, \"warmup_patches\": %d, \"warmup_tokens\": %d, \"mmproj_embd\": %d}\n",
            PROJECTOR_TYPE_NAMES[ctx->proj_type()].c_str(), weights, warmup_compute, fa_on ? "true" : "false",
            hp.n_embd, hp.n_layer, hp.n_head, hp.n_ff, hp.patch_size, hp.image_size, hp.n_merge,
            hp.image_min_pixels, hp.image_max_pixels, hp.warmup_image_size, warm_patches,
            clip_n_output_tokens(ctx, &warm), clip_n_mmproj_embd(ctx));

    // the largest image the preprocessor produces: what a real request can grow the buffer to
    int side = hp.image_max_pixels > 0 ? (int) std::sqrt((double) hp.image_max_pixels) : hp.image_size;
    side = side / align * align;
    std::vector<std::pair<int, int>> todo = {{side, side}};
    todo.insert(todo.end(), images.begin(), images.end());
    for (size_t i = 0; i < todo.size(); i++) {
        const auto [nx, ny] = todo[i];
        int n_tokens = 0;
        int n_patches = 0;
        const size_t compute = reserve_image(*ctx, nx, ny, n_tokens, n_patches);
        fprintf(stdout, "{\"image\": [%d, %d], \"largest\": %s, \"n_patches\": %d, \"n_tokens\": %d, \"compute\": %zu}\n",
                nx, ny, i == 0 ? "true" : "false", n_patches, n_tokens, compute);
    }
    for (const auto & [nx, ny] : traces) {
        trace_image(*ctx, nx, ny);
    }
    fflush(stdout);
    clip_free(ctx);
    clip_free(res.ctx_a);
    return 0;
}
