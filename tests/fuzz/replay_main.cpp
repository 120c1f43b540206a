// Replays fuzz inputs through a target's LLVMFuzzerTestOneInput without libFuzzer, so every
// committed seed and every input that ever crashed a target runs as an ordinary ctest in the
// normal build. Arguments: files or directories (every regular file in them, sorted), and
// optionally --only=PREFIX / --skip=PREFIX on file names (the known deep-nesting inputs).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
    std::string only, skip;
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg.starts_with("--only=")) only = arg.substr(7);
        else if (arg.starts_with("--skip=")) skip = arg.substr(7);
        else if (fs::is_directory(arg))
            for (const auto& e : fs::directory_iterator(arg)) {
                if (e.is_regular_file()) files.push_back(e.path());
            }
        else if (fs::is_regular_file(arg)) files.push_back(arg);
        else {
            std::fprintf(stderr, "no such file or directory: %s\n", argv[i]);
            return 2;
        }
    }
    std::sort(files.begin(), files.end());
    std::size_t run = 0;
    for (const auto& f : files) {
        const std::string name = f.filename().string();
        if (name.starts_with('.') || name == "README.md") continue;
        if (!only.empty() && !name.starts_with(only)) continue;
        if (!skip.empty() && name.starts_with(skip)) continue;
        std::ifstream in(f, std::ios::binary);
        std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        // Printed first: a crash leaves the input's name as the last line of the test's output.
        std::printf("replay %s (%zu bytes)\n", f.string().c_str(), bytes.size());
        std::fflush(stdout);
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
        ++run;
    }
    std::printf("%zu inputs replayed without a crash\n", run);
    return 0;
}
