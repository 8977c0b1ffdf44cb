// vramgate memory probe: asks the vendored llama.cpp what it would allocate, in bytes.
//
// llama-fit-params prints the same breakdown truncated to MiB; this probe prints exact bytes
// and applies llama-server's output limits (n_outputs_max = n_parallel, as Ollama runs
// llama-server), which llama-fit-params does not. Nothing is allocated and no weight is read:
// the model is loaded with no_alloc and load_mode NONE, exactly like common_fit_print.
// Arguments are llama-server's (-m -c -np -b -ub -fa -ctk -ctv -nr --embeddings ...).
#include "arg.h"
#include "common.h"
#include "llama.h"
#include "../src/llama-ext.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

static void log_to_stderr(ggml_log_level level, const char * text, void * /*user_data*/) {
    (void) level;
    fputs(text, stderr);
}

int main(int argc, char ** argv) {
    common_params params;
    if (!common_params_parse(argc, argv, params, LLAMA_EXAMPLE_SERVER)) {
        return 2;
    }
    if (params.n_parallel < 0) {
        params.n_parallel = 4;
        params.kv_unified = true;
    }
    if (params.embedding && params.n_batch > params.n_ubatch) {
        params.n_batch = params.n_ubatch;
    }
    // llama-server's server_output_limits() without speculative decoding
    if (params.embedding ||
            (params.pooling_type != LLAMA_POOLING_TYPE_UNSPECIFIED && params.pooling_type != LLAMA_POOLING_TYPE_NONE)) {
        params.n_outputs_max = params.n_batch;
        params.n_outputs_max_per_seq = 1;
    } else {
        params.n_outputs_max = std::max(1, std::min(params.n_batch, params.n_parallel));
        params.n_outputs_max_per_seq = 1;
    }

    llama_log_set(log_to_stderr, nullptr);
    llama_backend_init();

    llama_model_params mparams = common_model_params_to_llama(params);
    llama_context_params cparams = common_context_params_to_llama(params);
    // VRAMGATE_PROBE_ALLOC=1: really allocate (mmap the weights, allocate KV/output/compute) to check
    // that the no_alloc numbers are the real ones and to see the output buffer, which no_alloc reports as 0
    const char * alloc_env = getenv("VRAMGATE_PROBE_ALLOC");
    const bool real_alloc = alloc_env != nullptr && strcmp(alloc_env, "1") == 0;
    if (!real_alloc) {
        mparams.no_alloc  = true;
        mparams.load_mode = LLAMA_LOAD_MODE_NONE;
    }

    llama_model * model = llama_model_load_from_file(params.model.path.c_str(), mparams);
    if (model == nullptr) {
        fprintf(stdout, "{\"error\": \"failed to load model\"}\n");
        return 1;
    }
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        fprintf(stdout, "{\"error\": \"failed to create context\"}\n");
        llama_model_free(model);
        return 1;
    }

    const llama_memory_breakdown mb = llama_get_memory_breakdown(ctx);
    for (const auto & [buft, m] : mb) {
        fprintf(stdout, "{\"buft\": \"%s\", \"host\": %s, \"model\": %zu, \"context\": %zu, \"compute\": %zu}\n",
                ggml_backend_buft_name(buft), ggml_backend_buft_is_host(buft) ? "true" : "false",
                m.model, m.context, m.compute);
    }
    fprintf(stdout, "{\"n_ctx\": %u, \"n_ctx_seq\": %u, \"n_batch\": %u, \"n_ubatch\": %u, \"n_seq_max\": %u}\n",
            llama_n_ctx(ctx), llama_n_ctx_seq(ctx), llama_n_batch(ctx), llama_n_ubatch(ctx), llama_n_seq_max(ctx));
    fflush(stdout);

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
