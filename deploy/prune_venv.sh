#!/bin/sh
# Run inside the image build (Containerfile) on the finished virtual environment:
# removes what no Parley process loads, to keep the image within its size budget.
# The build imports every service afterwards, and writes and reads a Parquet
# table, so a removal that breaks a service fails the build.
set -eu
venv="$1"
# binutils' strip, unpacked from Debian's packages by scripts/build_image.sh
# and bind-mounted for this step only: the image itself gets no toolchain.
tools="${2:-}"
site="$(echo "$venv"/lib/python3*/site-packages)"

# pip and setuptools: nothing is installed at run time.
rm -rf "$venv"/bin/pip "$venv"/bin/pip3* "$site"/pip "$site"/pip-*.dist-info \
    "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/pkg_resources \
    "$site"/_distutils_hack "$site"/distutils-precedence.pth

# pyarrow: svc_message's archive writes and reads Parquet in memory, and its
# objects go through aiobotocore; Flight, pyarrow's own S3 filesystem, headers,
# Cython sources and tests are never loaded. The unversioned and fully
# versioned copies of libarrow_python are link-time names (the loader uses the
# soname, libarrow_python.so.<major>).
pa="$site/pyarrow"
rm -rf "$pa"/include "$pa"/tests "$pa"/src \
    "$pa"/libarrow_flight.so* "$pa"/_flight.*.so "$pa"/flight.py \
    "$pa"/libarrow_s3.so* "$pa"/_s3fs.*.so \
    "$pa"/libarrow_python.so "$pa"/libarrow_python.so.*.*.* \
    "$pa"/libarrow_python_flight.so* "$pa"/_substrait.*.so "$pa"/substrait.py \
    "$pa"/_azurefs.*.so "$pa"/_gcsfs.*.so "$pa"/_hdfs.*.so "$pa"/_orc.*.so "$pa"/orc.py \
    "$pa"/_dataset_orc.*.so "$pa"/_pyarrow_cpp_tests.*.so
find "$site" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \
    -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' \) -delete

# botocore: the API models of AWS services; Parley's only clients are S3 and
# (for a pod's web-identity role) STS.
find "$site"/botocore/data -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts \
    -exec rm -rf {} +

# Symbol tables the wheels ship unstripped (pyarrow's and uvloop's libraries,
# about 30 MB); the dynamic symbols stay, so loading works as before.
if [ -n "$tools" ]; then
    find "$site" -type f -name '*.so*' -exec env LD_LIBRARY_PATH="$tools/usr/lib/x86_64-linux-gnu" \
        "$tools/usr/bin/x86_64-linux-gnu-strip" --strip-unneeded {} +
fi
