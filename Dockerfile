# levee's container image: the static (musl) binary of `make static` on an empty base, with a CA
# bundle and a passwd/group entry for the non-root user 65532, nothing else. It pulls nothing, so
# it builds offline and the same way everywhere. Build it with `make image` (scripts/image.sh),
# which stages the context: root/ (etc/passwd, etc/group, etc/ssl/certs/ca-certificates.crt, from
# the host's CA bundle) and levee, with fixed owners, modes and times, so that the same binary
# and CA bundle give the same layers. A plain `docker build .` has none of these in its context.
FROM scratch
COPY root/ /
COPY levee /levee
USER 65532:65532
EXPOSE 6443 8080
ENTRYPOINT ["/levee"]
CMD ["run"]
