include $(sort $(wildcard $(BR2_EXTERNAL_MEDLB_PATH)/package/*/*.mk))
