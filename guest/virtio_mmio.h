/* virtio-mmio (version 2) transport and split virtqueues, polled: no interrupts, the used rings are read from memory. */
#ifndef FERRY_VIRTIO_MMIO_H
#define FERRY_VIRTIO_MMIO_H

#include <stdbool.h>
#include <stdint.h>

#include "bootinfo.h"

/* Registers (virtio 1.x, 4.2.2). */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */

#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_ISR_USED 0x1
#define VIRTIO_ISR_CONFIG 0x2

#define VIRTIO_F_VERSION_1 32

#define VIRTQ_MAX_SIZE 256 /* entries per queue this driver uses at most */
#define VIRTQ_PAGES 4      /* per queue: descriptor table, avail ring, used ring, one page of driver buffers */

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[VIRTQ_MAX_SIZE];
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[VIRTQ_MAX_SIZE];
};

struct virtio_dev {
    uint64_t base; /* 0: no device */
    uint32_t device_id;
    uint64_t features; /* negotiated */
    uint64_t tsc_khz;
    bool broken; /* the device misbehaved (or negotiation failed): the driver no longer touches it */
};

struct virtq {
    struct virtio_dev *dev;
    uint16_t index; /* the device's queue number */
    uint16_t size;  /* a power of 2, <= VIRTQ_MAX_SIZE */
    uint16_t num_free;
    uint16_t free_head;  /* first free descriptor; the free list is driver-private (free_next) */
    uint16_t avail_idx;  /* the next avail.idx the driver publishes */
    uint16_t last_used;  /* used.idx the driver has consumed up to */
    uint16_t in_flight;  /* chains the device holds */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint8_t *scratch; /* the queue's page of driver buffers */
    /* Driver-private: nothing the device can write is trusted for bookkeeping. */
    uint16_t free_next[VIRTQ_MAX_SIZE];
    uint16_t chain_len[VIRTQ_MAX_SIZE]; /* by head: descriptors in the chain, 0 = not in flight */
    uint32_t writable[VIRTQ_MAX_SIZE];  /* by head: device-writable bytes in the chain */
    uint64_t cookie[VIRTQ_MAX_SIZE];    /* by head: the caller's tag */
};

struct virtq_buf {
    uint64_t addr;
    uint32_t len;
    bool writable;
};

/* Finds the first virtio-mmio device of `device_id` in the boot-info device list (kind 1). */
bool virtio_find(const struct boot_info *info, uint32_t device_id, struct virtio_dev *dev);

/* Resets the device, sets ACKNOWLEDGE and DRIVER and reads the device's 64 feature bits. NULL or an error. */
const char *virtio_start(struct virtio_dev *dev, uint64_t *offered);

/* Writes the driver's features (VERSION_1 required), sets FEATURES_OK and checks the device kept it. */
const char *virtio_set_features(struct virtio_dev *dev, uint64_t accepted);

/* Sets up queue `index` in VIRTQ_PAGES pages at `memory` (page aligned, zeroed by the caller or fresh). */
const char *virtq_setup(struct virtio_dev *dev, struct virtq *q, uint16_t index, uint64_t memory);

void virtio_driver_ok(struct virtio_dev *dev);

/* Reports {"event":"virtio_error",...}, sets FAILED and marks the device broken. */
void virtio_fail(struct virtio_dev *dev, const char *msg);

uint32_t virtio_config_read32(struct virtio_dev *dev, unsigned offset);
void virtio_config_write32(struct virtio_dev *dev, unsigned offset, uint32_t value);

uint32_t virtio_status(struct virtio_dev *dev);

/* InterruptACK (the driver reads InterruptStatus inline, see balloon.h). */
void virtio_isr_ack(struct virtio_dev *dev, uint32_t isr);

/* Free descriptors. */
static inline unsigned virtq_free(const struct virtq *q)
{
    return q->num_free;
}

/* Adds a chain and publishes it in the avail ring (no notification). Returns false if it does not fit. */
bool virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned count, uint64_t cookie);

/* QueueNotify. */
void virtq_kick(struct virtq *q);

/* Takes one returned chain: 1 = got one (cookie, used length), 0 = none, -1 = the device broke the ring rules
 * (reported, device now broken). */
int virtq_get_used(struct virtq *q, uint64_t *cookie, uint32_t *len);

/* Polls until one chain comes back (reading memory only). Gives up after 2 s of guest running time (device
 * broken). Returns true with its cookie and length. */
bool virtq_wait_used(struct virtq *q, uint64_t *cookie, uint32_t *len);

#endif
